"""A cached launch through the hub, against JupyterHub's DockerSpawner with the same image.

Two real JupyterHubs run side by side on host networking, each as deployed:

- **booklab**: this project's hub and one ``booklab-runner``; ``POST
  /hub/api/users/alice/servers/bench`` with a project and ref (the permission
  check against the GitLab double, a job in Redis, the runner's fetch and
  "image exists", the container start) until the hub says ready and
  ``/user/alice/bench/api/status`` answers 200 through the proxy;
  Booklab's hub is behind Traefik with its routes in Redis;
- **dockerspawner**: a stock JupyterHub (its default proxy,
  configurable-http-proxy) whose DockerSpawner starts the image Booklab built,
  with the same command, until the same two checks pass.

Launches alternate between the two (load changes hit both alike); each side
warms up once first (Booklab builds its image then). ``--latency`` makes the
GitLab double answer every call after that many seconds, as a GitLab over a
network would. Prints medians and the ratio; asserts nothing.

Usage: ``.venv/bin/python -m benchmarks.launch_hub [--runs N] [--latency S]``
(needs redis-server, dockerd, Traefik and the local test image, as the tests do).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import requests

import docker
from tests.conftest_hub import MAINTAINER
from tests.conftest_stack import (
    BIN,
    DEMO_DOCKERFILE,
    SERVICE_TOKEN,
    Hub,
    Process,
    RunnerProcess,
    notebook,
)
from tests.gitlab_double import GitLabDouble
from tests.services import RedisServer, free_ports, remove_images, remove_runner_containers

POLL = 0.05  # s between checks, the same for both sides (faster loads the hubs)
SPAWNER_CONFIG = """
from dockerspawner import DockerSpawner

class HostDockerSpawner(DockerSpawner):
    # on the host's network, as the Booklab runner here: DockerSpawner's documented
    # override for network_mode=host
    async def get_ip_and_port(self):
        return "127.0.0.1", self.port

c.JupyterHub.ip, c.JupyterHub.port = "127.0.0.1", {port}
c.JupyterHub.hub_ip, c.JupyterHub.hub_port = "127.0.0.1", {hub_port}
c.JupyterHub.db_url = "sqlite:///{workdir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = HostDockerSpawner
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "tokens", "read:users"]}}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.DockerSpawner.image = "{image}"
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True  # no port bindings on the host network
c.DockerSpawner.remove = True
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.name_template = "bench-dsp-{{username}}"
c.Spawner.port = {server_port}
c.Spawner.start_timeout = 120
"""


class StockHub:
    """A stock JupyterHub with DockerSpawner, configured as its docs say for host networking."""

    def __init__(self, workdir: Path, image: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, hub_port, api_port, server_port = free_ports(4)
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "config.py").write_text(SPAWNER_CONFIG.format(
            port=self.port, hub_port=hub_port, workdir=workdir, token=SERVICE_TOKEN,
            api_port=api_port, image=image,
            server_port=server_port))
        self.process = Process("bench-dockerspawner-hub",
                               [str(BIN / "jupyterhub"), "-f", "config.py"],
                               {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
                               workdir)
        wait_answer(f"{self.url}/hub/api")

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.url}/hub/api{path}", timeout=120,
                                headers={"Authorization": f"token {SERVICE_TOKEN}"}, **kw)


def wait_answer(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


def launch(api, url: str, user: str, path: str, body: dict | None) -> float:
    """POST the server, then until the hub says ready and the server answers through
    the proxy; the server is stopped afterwards (not timed)."""
    token = api("POST", f"/users/{user}/tokens", json={"expires_in": 600}).json()["token"]
    start = time.perf_counter()
    r = api("POST", f"/users/{user}/{path}", json=body)
    assert r.status_code in (201, 202), r.text
    name = path.removeprefix("servers/") if path.startswith("servers/") else ""
    while not api("GET", f"/users/{user}").json()["servers"].get(name, {}).get("ready"):
        time.sleep(POLL)
    prefix = f"/user/{user}/{name + '/' if name else ''}"
    while requests.get(f"{url}{prefix}api/status", timeout=30,
                       headers={"Authorization": f"token {token}"}).status_code != 200:
        time.sleep(POLL)
    elapsed = time.perf_counter() - start
    r = api("DELETE", f"/users/{user}/{path}")
    assert r.status_code in (202, 204), r.text
    while api("GET", f"/users/{user}").json()["servers"].get(name, {}).get("ready"):
        time.sleep(0.05)
    while api("GET", f"/users/{user}").json()["servers"].get(name, {}).get("pending"):
        time.sleep(0.05)
    return elapsed


def run(runs: int, latency: float) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="booklab-bench-hub-"))
    redis = RedisServer(tmp / "redis").start()
    gitlab = GitLabDouble(tmp / "gitlab")
    gitlab.start()
    gitlab.add_user("alice", password="alice-pw")
    gitlab.add_project("demo/hello", files={"Dockerfile": DEMO_DOCKERFILE,
                                            "hello.ipynb": notebook("# bench")})
    gitlab.add_member("demo/hello", "alice", MAINTAINER)
    client = docker.from_env(version="auto")
    token = secrets.token_hex(32)
    procs: list[Process] = []
    try:
        hub = Hub(tmp / "hub", gitlab, redis.url, token,
                  overrides={"runners": {"image_prefix": "booklab-bench/"},
                             "gitlab": {"clone_method": "token"}})
        (tmp / "hub").mkdir()
        hub.start()
        procs.append(hub.process)
        (tmp / "runner").mkdir()
        runner = RunnerProcess("bench-runner", redis.url, token, tmp / "runner",
                               key_prefix=hub.key_prefix)
        procs.append(runner)
        hub.login("alice", "alice-pw")
        body = {"user_options": {"project": "demo/hello", "ref": "main"}}
        launch(hub.api, hub.url, "alice", "servers/bench", body)  # builds the image
        image = hub.job_of("alice", "bench")["image"]
        stock = StockHub(tmp / "stock", image)
        procs.append(stock.process)
        assert stock.api("POST", "/users/bench").status_code in (201, 409)
        launch(stock.api, stock.url, "bench", "server", None)  # warm the page cache
        gitlab.latency = latency
        ours, base = [], []
        for _ in range(runs):
            ours.append(launch(hub.api, hub.url, "alice", "servers/bench", body))
            base.append(launch(stock.api, stock.url, "bench", "server", None))
        mo, mb = statistics.median(ours), statistics.median(base)
        print(f"runs: {runs} each, GitLab latency {latency * 1000:.0f} ms, image {image}")
        print(f"booklab       POST -> ready -> api/status 200: median {mo:.3f} s, "
              f"min {min(ours):.3f} s")
        print(f"dockerspawner POST -> ready -> api/status 200: median {mb:.3f} s, "
              f"min {min(base):.3f} s")
        print(f"ratio booklab/dockerspawner, median: {mo / mb:.2f}")
        return [{"row": "cold cached launch through the hub", "ours_s": mo,
                 "baseline": "DockerSpawner", "baseline_s": mb, "target": 0.65,
                 "runs": runs, "gitlab_latency_s": latency}]
    finally:
        for proc in reversed(procs):
            proc.stop()
        remove_runner_containers(client, {"bench-runner"})
        for c in client.containers.list(all=True, filters={"name": "bench-dsp-"}):
            c.remove(force=True)
        remove_images(client, "booklab-bench/")
        gitlab.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the GitLab double waits before every answer")
    args = parser.parse_args()
    run(args.runs, args.latency)


if __name__ == "__main__":
    main()
