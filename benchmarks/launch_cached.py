"""How much a launch whose image already exists costs, against starting the container.

Both sides run in this one process, on the same machine, alternately:

- **booklab**: a job queued in Redis (as the hub queues it) until the runner
  reports it ``running``: claim, shallow fetch from the GitLab double,
  environment hash, "image exists", copying the checkout in, container start,
  port open. The runner runs in-process (same event loop).
- **baseline**: ``docker-py`` ``containers.run`` of the same image with the same
  command and environment, until the same port check passes.

Both start Jupyter Server, so the notebook's own start-up is in both numbers;
the ratio is what Booklab adds on top. Prints medians and ratios; asserts
nothing (timings depend on the machine and its load).

Usage: ``.venv/bin/python -m benchmarks.launch_cached [--runs N]``
(needs redis-server, dockerd and the local test image, as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

import docker
from booklab_spawner.keys import Keys
from booklab_spawner.runner.app import Runner, RunnerApp
from booklab_spawner.runner.containers import _connects
from tests.conftest_runner import RT_DOCKERFILE, SERVER_CMD, LaunchDouble, notebook
from tests.gitlab_double import GitLabDouble
from tests.services import RedisServer

RUNNER_ID = "rt-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await _connects("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} did not open")
        await asyncio.sleep(0.02)


async def booklab_launch(launcher: LaunchDouble, sha: str) -> float:
    start = time.perf_counter()
    job_id = await launcher.launch("demo/hello", sha)
    await launcher.wait_state(job_id, "running")
    elapsed = time.perf_counter() - start
    await launcher.stop(job_id)
    return elapsed


async def direct_launch(client: docker.DockerClient, image: str, token: str) -> float:
    port = free_port()
    start = time.perf_counter()
    container = await asyncio.to_thread(
        client.containers.run, image, [*SERVER_CMD, "--ip=127.0.0.1", f"--port={port}"],
        detach=True, network_mode="host", user="1000", environment={"JUPYTER_TOKEN": token},
        labels={"org.booklab.runner": RUNNER_ID})
    await wait_port(port)
    elapsed = time.perf_counter() - start
    await asyncio.to_thread(container.remove, force=True)
    return elapsed


@contextlib.asynccontextmanager
async def runner_stack(dockerfile: str = RT_DOCKERFILE):
    """Redis, the GitLab double with demo/hello, an in-process runner and the tests'
    launcher: ``(launcher, docker client, double, work dir)``; all gone afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="booklab-bench-"))
    server = RedisServer(tmp / "redis").start()
    gl = GitLabDouble(tmp / "gitlab")
    gl.start()
    gl.add_user("alice", password="alice-pw")
    gl.add_project("demo/hello", files={"Dockerfile": dockerfile,
                                        "hello.ipynb": notebook("# bench")})
    gl.add_member("demo/hello", "alice", 40)
    token, keys = secrets.token_hex(32), Keys("booklab-bench:")
    redis = aioredis.from_url(server.url, decode_responses=True)
    launcher = LaunchDouble(redis, keys, token, gl)
    app = RunnerApp(runner_id=RUNNER_ID, redis_url=server.url, runner_token=token,
                    work_dir=str(tmp / "work"), key_prefix=keys.prefix)
    runner = Runner(app)
    task = asyncio.create_task(runner.run())
    client = docker.from_env(version="auto")
    try:
        yield launcher, client, gl, tmp
    finally:
        runner.stopping.set()
        await task
        cleanup(client)
        await redis.aclose()
        gl.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def run(runs: int) -> list[dict]:
    async with runner_stack() as (launcher, client, gl, _):
        return await report(launcher, client, gl, runs)


async def report(launcher: LaunchDouble, client, gl: GitLabDouble, runs: int) -> list[dict]:
    sha = gl.commit("demo/hello", "main", {"warm.ipynb": notebook("# warm")})
    job_id = await launcher.launch("demo/hello", sha)  # builds the image once
    image = (await launcher.wait_state(job_id, "running"))["image"]
    await launcher.stop(job_id)
    ours, base = [], []
    for i in range(runs):  # alternate, so that load changes hit both sides alike
        sha = gl.commit("demo/hello", "main", {f"n{i}.ipynb": notebook(f"# {i}")})
        ours.append(await booklab_launch(launcher, sha))
        base.append(await direct_launch(client, image, launcher.jupyter_token))
    mo, mb = statistics.median(ours), statistics.median(base)
    print(f"runs: {runs} (each side), image {image} already built")
    print(f"booklab launch (queue -> running), median {mo:.3f} s, min {min(ours):.3f} s")
    print(f"docker-py run (create -> listening), median {mb:.3f} s, min {min(base):.3f} s")
    print(f"ratio booklab/docker median: {mo / mb:.2f}, min: {min(ours) / min(base):.2f}")
    print(f"overhead, median: {mo - mb:+.3f} s")
    return [{"row": "cached launch on a runner (queue -> running)", "ours_s": mo,
             "baseline": "docker run", "baseline_s": mb, "runs": runs}]


def cleanup(client) -> None:
    for c in client.containers.list(all=True, filters={"label": f"org.booklab.runner={RUNNER_ID}"}):
        c.remove(force=True)
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith("booklab-rt/"):
                client.images.remove(tag, force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(run(parser.parse_args().runs))


if __name__ == "__main__":
    main()
