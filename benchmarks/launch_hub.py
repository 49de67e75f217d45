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

Booklab runs twice, each a hub with its own runner on the same Redis, GitLab
double and image:

- **booklab hot**: ``runners.warm_servers: 1``: the launch binds the warm
  container the runner keeps for the image (runner/warm.py). After each hot
  launch the benchmark waits, untimed, until the runner's next warm container
  has done its imports -- the steady state of launches more than a few seconds
  apart -- so that its refill never overlaps another side's launch;
- **booklab cold**: ``runners.warm_servers: 0``: a cached launch that starts a
  fresh container (create, copy the checkout in, start, the server's imports),
  with the product's default ``runners.prestart: true``: the runner starts that
  container from the project's last image while it fetches (runner/warm.py);
- **booklab cold, no prestart**: ``prestart: false`` as well: the container is
  created only after the fetch and the image check.

Launches alternate between the sides (load changes hit all alike); each side
warms up once first (Booklab builds its image then). ``--latency`` makes the
GitLab double answer every call after that many seconds, as a GitLab over a
network would. Prints medians, the runner's start phase (``starting`` ->
``running`` in the job log) and the ratios against DockerSpawner; ``--json``
writes them too. Asserts nothing.

Usage: ``.venv/bin/python -m benchmarks.launch_hub [--runs N] [--latency S] [--json F]``
(needs redis-server, dockerd, Traefik and the local test image, as the tests do).
"""

from __future__ import annotations

import argparse
import json
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

# (side, runners.warm_servers, runners.prestart): the first builds the image
SIDES = (("cold", 0, True), ("plain", 0, False), ("hot", 1, True))
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


MARKS: list[dict[str, float]] = []  # per launch: wall-clock times of POST and hub-ready


def launch(api, url: str, user: str, path: str, body: dict | None) -> float:
    """POST the server, then until the hub says ready and the server answers through
    the proxy; the server is stopped afterwards (not timed)."""
    token = api("POST", f"/users/{user}/tokens", json={"expires_in": 600}).json()["token"]
    marks = {"post": time.time()}
    MARKS.append(marks)
    start = time.perf_counter()
    r = api("POST", f"/users/{user}/{path}", json=body)
    assert r.status_code in (201, 202), r.text
    name = path.removeprefix("servers/") if path.startswith("servers/") else ""
    while not api("GET", f"/users/{user}").json()["servers"].get(name, {}).get("ready"):
        time.sleep(POLL)
    marks["ready"] = time.time()
    prefix = f"/user/{user}/{name + '/' if name else ''}"
    while requests.get(f"{url}{prefix}api/status", timeout=30,
                       headers={"Authorization": f"token {token}"}).status_code != 200:
        time.sleep(POLL)
    elapsed = time.perf_counter() - start
    marks["status"] = time.time()
    r = api("DELETE", f"/users/{user}/{path}")
    assert r.status_code in (202, 204), r.text
    while api("GET", f"/users/{user}").json()["servers"].get(name, {}).get("ready"):
        time.sleep(0.05)
    while api("GET", f"/users/{user}").json()["servers"].get(name, {}).get("pending"):
        time.sleep(0.05)
    return elapsed


def start_phase(hub: Hub, user: str, server: str) -> float:
    """Seconds from ``starting`` to ``running`` in the newest job's log (runner side)."""
    job = hub.job_of(user, server)
    states = {f["state"]: float(f["ts"]) for _, f in hub.redis().xrange(hub.keys.log(job["id"]))
              if f.get("kind") == "state"}
    return states["running"] - states["starting"]


PHASES = ("queued", "claimed", "fetching", "building", "starting", "running")


def phase_marks(hub: Hub, user: str, server: str) -> dict[str, float]:
    """Seconds after the POST at which the newest job reached each state (the job
    log's wall-clock ``ts``), the hub said ready, and ``api/status`` answered."""
    marks = MARKS[-1]
    job = hub.job_of(user, server)
    out = {f["state"]: float(f["ts"]) - marks["post"]
           for _, f in hub.redis().xrange(hub.keys.log(job["id"]))
           if f.get("kind") == "state" and f.get("state") in PHASES}
    out["hub ready"] = marks["ready"] - marks["post"]
    out["api/status 200"] = marks["status"] - marks["post"]
    return out


def print_phases(side: str, runs: list[dict[str, float]]) -> dict[str, float]:
    """Median time after the POST of each mark, and the median step to it."""
    names = [n for n in (*PHASES, "hub ready", "api/status 200") if all(n in r for r in runs)]
    medians = {n: statistics.median(r[n] for r in runs) for n in names}
    print(f"{side}: median seconds after the POST (step from the previous mark)")
    previous = 0.0
    for name in names:
        print(f"  {name:<16} {medians[name]:>7.3f}  (+{medians[name] - previous:.3f})")
        previous = medians[name]
    return medians


def wait_warm_ready(client, runner_id: str, timeout: float = 120) -> None:
    """Until the runner has an unbound warm container whose imports are done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in client.containers.list(filters={"label": [f"org.booklab.runner={runner_id}",
                                                           "org.booklab.warm"]}):
            if c.name.startswith("booklab-warm-") and b"booklab-warm: ready" in c.logs():
                return
        time.sleep(0.1)
    raise TimeoutError(f"runner {runner_id} made no warm container")


def _row(name: str, times: list[float], phases: list[float], base: float) -> dict:
    return {"name": name, "median_s": statistics.median(times), "min_s": min(times),
            "start_phase_median_s": statistics.median(phases) if phases else None,
            "ratio_to_dockerspawner": statistics.median(times) / base}


def run(runs: int, latency: float, json_path: str | None = None) -> dict:
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
        hubs, runners = {}, {}
        for side, warm, prestart in SIDES:
            hub = Hub(tmp / f"hub-{side}", gitlab, redis.url, token,
                      overrides={"runners": {"image_prefix": "booklab-bench/",
                                             "warm_servers": warm, "prestart": prestart},
                                 "gitlab": {"clone_method": "token"}})
            (tmp / f"hub-{side}").mkdir()
            hub.start()
            procs.append(hub.process)
            (tmp / f"runner-{side}").mkdir()
            runners[side] = RunnerProcess(f"bench-runner-{side}", redis.url, token,
                                          tmp / f"runner-{side}", key_prefix=hub.key_prefix)
            procs.append(runners[side])
            hub.login("alice", "alice-pw")
            hubs[side] = hub
        body = {"user_options": {"project": "demo/hello", "ref": "main"}}
        for side, _, _ in SIDES:  # the first builds the image; the others reuse it
            launch(hubs[side].api, hubs[side].url, "alice", "servers/bench", body)
        wait_warm_ready(client, runners["hot"].runner_id)
        image = hubs["cold"].job_of("alice", "bench")["image"]
        stock = StockHub(tmp / "stock", image)
        procs.append(stock.process)
        assert stock.api("POST", "/users/bench").status_code in (201, 409)
        launch(stock.api, stock.url, "bench", "server", None)  # warm the page cache
        gitlab.latency = latency
        sides = [side for side, _, _ in SIDES]
        times: dict[str, list[float]] = {side: [] for side in (*sides, "dockerspawner")}
        phases: dict[str, list[float]] = {side: [] for side in sides}
        marks: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(runs):
            for side in sides:
                hub = hubs[side]
                times[side].append(launch(hub.api, hub.url, "alice", "servers/bench", body))
                phases[side].append(start_phase(hub, "alice", "bench"))
                marks[side].append(phase_marks(hub, "alice", "bench"))
                if side == "hot":
                    wait_warm_ready(client, runners["hot"].runner_id)  # untimed refill
            times["dockerspawner"].append(launch(stock.api, stock.url, "bench", "server", None))
        base = statistics.median(times["dockerspawner"])
        result = {"runs": runs, "gitlab_latency_s": latency, "image": image, "rows": [
            _row("booklab hot (warm server)", times["hot"], phases["hot"], base),
            _row("booklab cold (cached image)", times["cold"], phases["cold"], base),
            _row("booklab cold, no prestart", times["plain"], phases["plain"], base),
            _row("dockerspawner", times["dockerspawner"], [], base)]}
        print(f"runs: {runs} each, GitLab latency {latency * 1000:.0f} ms, image {image}")
        print("POST -> ready -> api/status 200 through the proxy")
        print(f"{'side':<30} {'median s':>9} {'min s':>7} {'start phase s':>14} "
              f"{'x dockerspawner':>16}")
        for row in result["rows"]:
            phase = row["start_phase_median_s"]
            print(f"{row['name']:<30} {row['median_s']:>9.3f} {row['min_s']:>7.3f} "
                  f"{'' if phase is None else f'{phase:.3f}':>14} "
                  f"{row['ratio_to_dockerspawner']:>16.2f}")
        result["phases"] = {side: print_phases(side, marks[side]) for side in sides}
        if json_path:
            Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        for proc in reversed(procs):
            proc.stop()
        remove_runner_containers(client, {f"bench-runner-{side}" for side, _, _ in SIDES})
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
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    run(args.runs, args.latency, args.json)


if __name__ == "__main__":
    main()
