"""A first launch (nothing cached) against bare repo2docker, and a notebook-only relaunch.

Both sides run in this one process, on the same machine, alternately:

- **booklab, first launch**: a job queued in Redis until the runner reports it
  ``running``: claim, fetch from the GitLab double, repo2docker build of an
  environment no image exists for, container start, port open;
- **bare repo2docker**: ``repo2docker --no-run`` on a checkout of the same commit
  (as an operator would run it by hand, with the same user and the Local
  content provider), then ``docker run`` of the image until the same port check;
- **booklab, notebook-only relaunch**: a commit that changes only a notebook, on
  top of a built environment: no build.

Every first launch builds for real: its ``Dockerfile`` carries a fresh nonce in a
``RUN`` step, so neither side gets the layer of an earlier run from BuildKit's
cache. Prints medians and ratios; asserts nothing.

Usage: ``.venv/bin/python -m benchmarks.build_first [--runs N]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.launch_cached import direct_launch, runner_stack
from booklab_spawner.runner.build import R2D_CONFIG
from tests.conftest_runner import RT_DOCKERFILE, LaunchDouble, notebook
from tests.gitlab_double import GitLabDouble

BARE_PREFIX = "booklab-bench-bare/"


COPY_ALL = "COPY --chown=1000:1000 . /home/jovyan/\n"


def dockerfile(nonce: str) -> str:
    """The test Dockerfile with a step no earlier build has a cached layer for, and
    without its ``COPY .``: a Dockerfile that copies only what its environment needs
    (here nothing) is keyed on what it copies, so a notebook-only commit needs no
    build (Booklab copies the commit's files in at start; runner/dockerfile.py)."""
    assert COPY_ALL in RT_DOCKERFILE
    return RT_DOCKERFILE.replace(COPY_ALL, "").replace(
        "WORKDIR", f"RUN echo {nonce} > /tmp/nonce\nWORKDIR", 1)


async def booklab_launch(launcher: LaunchDouble, sha: str) -> tuple[float, str]:
    start = time.perf_counter()
    job_id = await launcher.launch("demo/hello", sha)
    job = await launcher.wait_state(job_id, "running")
    elapsed = time.perf_counter() - start
    await launcher.stop(job_id)
    return elapsed, job["image"]


def bare_build(gl: GitLabDouble, sha: str, work: Path) -> tuple[float, str]:
    """repo2docker by hand on a checkout of ``sha`` (the clone is not timed)."""
    checkout = work / f"bare-{sha[:12]}"
    subprocess.run(["git", "clone", "-q", str(gl.store.project_by_path("demo/hello").repo_dir),
                    str(checkout)], check=True)
    subprocess.run(["git", "-C", str(checkout), "checkout", "-q", sha], check=True)
    shutil.rmtree(checkout / ".git")
    config = work / "r2d_config.py"
    config.write_text(R2D_CONFIG)
    image = f"{BARE_PREFIX}demo:{sha[:12]}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "repo2docker", "--config", str(config),
                    "--no-run", "--user-id", "1000", "--user-name", "jovyan",
                    "--image-name", image, str(checkout)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    return time.perf_counter() - start, image


async def run(runs: int) -> list[dict]:
    async with runner_stack(dockerfile("warm")) as (launcher, client, gl, tmp):
        try:
            return await report(launcher, client, gl, runs, tmp)
        finally:
            for image in client.images.list():
                for tag in image.tags:
                    if tag.startswith(BARE_PREFIX):
                        client.images.remove(tag, force=True)


async def report(launcher, client, gl: GitLabDouble, runs: int, tmp: Path) -> list[dict]:
    first, bare, relaunch, reused = [], [], [], []
    for i in range(runs):  # alternate, so that load changes hit all sides alike
        sha = gl.commit("demo/hello", "main", {"Dockerfile": dockerfile(secrets.token_hex(8))})
        built, bare_image = await asyncio.to_thread(bare_build, gl, sha, tmp)
        bare.append(built + await direct_launch(client, bare_image, launcher.jupyter_token))
        sha = gl.commit("demo/hello", "main", {"Dockerfile": dockerfile(secrets.token_hex(8))})
        elapsed, image = await booklab_launch(launcher, sha)
        first.append(elapsed)
        # on top of that commit: the same environment, one more notebook
        sha = gl.commit("demo/hello", "main", {f"n{i}.ipynb": notebook(f"# {i}")})
        again, again_image = await booklab_launch(launcher, sha)
        relaunch.append(again)
        reused.append(again_image == image)
    mf, mb, mr = (statistics.median(x) for x in (first, bare, relaunch))
    print(f"runs: {runs} (each side), every first launch a real build")
    print(f"booklab first launch (queue -> running), median {mf:.2f} s, min {min(first):.2f} s")
    print(f"bare repo2docker + docker run (-> listening), median {mb:.2f} s, "
          f"min {min(bare):.2f} s")
    print(f"booklab notebook-only relaunch, median {mr:.2f} s, min {min(relaunch):.2f} s "
          f"(image reused in {sum(reused)} of {runs})")
    print(f"ratio first launch / bare repo2docker, median: {mf / mb:.2f}")
    print(f"ratio rebuild / notebook-only relaunch, median: {mf / mr:.1f}x")
    return [{"row": "first launch, real build (queue -> running)", "ours_s": mf,
             "baseline": "repo2docker+run", "baseline_s": mb, "target": 1.05, "runs": runs},
            {"row": "notebook-only relaunch vs its rebuild", "ours_s": mr,
             "baseline": "rebuild", "baseline_s": mf, "target": 0.10, "runs": runs,
             "image_reused": sum(reused)}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(run(parser.parse_args().runs))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
