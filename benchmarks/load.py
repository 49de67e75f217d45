"""Under load: runner hosts, many runners, a burst of launches through the hub (issue 11, item 5).

Everything is real and as deployed, on this one machine:

- **runner hosts**: network namespaces on a bridge, each with its own dockerd
  (``tests/netns.py``), the light image (``benchmarks/light/``) loaded into each;
- **hub host** (the root namespace): the hub with Traefik through Redis, its API
  on the bridge address; Redis with a password and the GitLab double on the
  bridge address (as ``tests/conftest_hosts.py`` puts them together);
- **runners**: ``--runners`` ``booklab-runner`` processes spread over the hosts,
  ``--slots`` each, notebooks in bridge mode behind the runner's firewall;
- **people**: ``--launches`` GitLab users (Developers of one project whose
  Dockerfile is ``FROM booklab-bench/light``), each logged in to the hub by the
  real OAuth flow, each launching one named server.

The burst: every launch is ``POST``ed at once (the hub's REST API, as
``benchmarks/launch_hub.py`` does); a launch is done when the hub lists the
server ready and ``/user/<name>/<server>/api/status`` answers 200 through the
proxy with the person's token; it is then stopped, which frees the slot for a
queued launch. A 429 from the hub is retried after its ``Retry-After`` (capped
at 5 s) and counted. Meanwhile a prober times ``GET /hub/api/users/<name>``
every 0.1 s, and a sampler reads CPU time and RSS of the hub, Traefik and Redis
from ``/proc``.

Reported: launches lost (never ready, or a job record not ``stopped`` at the
end) and double-claimed (a job id in two claims of the runners' logs, or
claimed by another runner than its record says), claims per host, hub API
latency p50/p99 during the burst, launches/s, CPU seconds and RSS growth of
hub/Traefik/Redis per 100 launches and per 100 running servers, idle runner
RSS. Asserts nothing; it fails only when it cannot run.

Usage (root: namespaces, dockerds)::

    .venv/bin/python -m benchmarks.load --quick        # 1 host, 4 runners x 2, 20 launches
    .venv/bin/python -m benchmarks.load                # 2 hosts, 10 runners x 2, 100 launches
    .venv/bin/python -m benchmarks.load --full         # 5 hosts, 50 runners x 2, 500 launches
    .venv/bin/python -m benchmarks.load --hosts 3 --runners 12 --slots 2 --launches 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.conftest_stack import SERVICE_TOKEN, Hub, RunnerProcess
from tests.gitlab_double import GitLabDouble
from tests.netns import Lan
from tests.services import RedisServer, remove_runner_containers

HERE = Path(__file__).resolve().parent
LIGHT_IMAGE = "booklab-bench/light:latest"
BASE_IMAGE = "booklab-test/debian:bookworm"
PROJECT = "bench/light"
IMAGE_PREFIX = "booklab-ld/"  # built images, on the runner hosts only
DEVELOPER = 30
SCALES = {  # hosts, runners, slots, launches
    "quick": (1, 4, 2, 20),
    "default": (2, 10, 2, 100),
    "full": (5, 50, 2, 500),
}
CLAIMED = re.compile(r"claimed job (\S+)")


@dataclass
class Launch:
    user: str
    server: str = "load"
    token: str = ""
    posted: float = 0.0  # first POST sent
    answered: float = 0.0  # the POST that was taken (201/202) answered
    ready: float = 0.0  # listed ready by the hub
    status: float = 0.0  # api/status 200 through the proxy
    stopped: float = 0.0
    retries_429: int = 0
    error: str = ""
    event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[str, str]:
        return self.user, self.server


# -- the image -------------------------------------------------------------------------
def build_light_image(work: Path) -> Path:
    """``docker build --network none`` of benchmarks/light (cached), saved to a tar."""
    subprocess.run(["docker", "image", "inspect", BASE_IMAGE], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["docker", "build", "-q", "--network", "none", "-t", LIGHT_IMAGE,
                    str(HERE / "light")], check=True, stdout=subprocess.DEVNULL)
    tar = work / "light.tar"
    subprocess.run(["docker", "save", "-o", str(tar), LIGHT_IMAGE], check=True)
    return tar


# -- /proc ------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its children it has waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICK  # utime stime cutime cstime


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_named(parent: int, name: str) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and name.encode() in cmd:
            return int(d.name)
    return None


# -- the stack --------------------------------------------------------------------------
class Stack:
    """Lan, Redis, GitLab double, hub, runners; :meth:`close` removes all of it."""

    def __init__(self, hosts: int, runners: int, slots: int, launches: int,
                 spawn_limit: int | None):
        self.n_hosts, self.n_runners, self.slots = hosts, runners, slots
        self.n_launches, self.spawn_limit = launches, spawn_limit
        self.tmp = Path(tempfile.mkdtemp(prefix="booklab-bench-load-"))
        self.lan: Lan | None = None
        self.redis = self.gitlab = self.hub = None
        self.runners: list[RunnerProcess] = []
        self.token = secrets.token_hex(32)
        self.timings: dict[str, float] = {}

    def timed(self, name: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.timings[name] = time.perf_counter() - start
        print(f"  {name}: {self.timings[name]:.1f} s", flush=True)
        return result

    def start(self) -> None:
        tar = self.timed("light image build + save", build_light_image, self.tmp)
        self.lan = self.timed(f"{self.n_hosts} runner hosts (netns + dockerd)", Lan,
                              self.n_hosts)
        with ThreadPoolExecutor(self.n_hosts) as pool:
            self.timed("image load into every host", lambda: list(
                pool.map(lambda h: h.load_image(tar), self.lan.hosts)))
        self.redis = RedisServer(self.tmp / "redis", host=self.lan.address,
                                 password=secrets.token_hex(16)).start()
        self.timed("GitLab double + users", self.start_gitlab)
        self.timed("hub", self.start_hub)
        self.timed(f"{self.n_runners} runners registered", self.start_runners)

    def start_gitlab(self) -> None:
        data = self.tmp / "gitlab"
        gl = GitLabDouble(data)
        gl.start(host=self.lan.address)
        self.gitlab = gl
        gl.add_project(PROJECT, files={
            "Dockerfile": f"FROM {LIGHT_IMAGE}\nCOPY --chown=1000:1000 . /home/jovyan/\n",
            "README.md": "# light\n"}, default_branch="main", visibility="private")
        for i in range(self.n_launches):
            gl.add_user(f"u{i:04d}", password="pw")
            gl.add_member(PROJECT, f"u{i:04d}", DEVELOPER)

    def start_hub(self) -> None:
        lan = self.lan
        hub_cfg = {"hub_ip": lan.address}
        if self.spawn_limit is not None:
            hub_cfg["concurrent_spawn_limit"] = self.spawn_limit
        overrides = {
            "hub": hub_cfg,
            "gitlab": {"clone_method": "token"},
            "redis": {"key_prefix": f"ld{secrets.token_hex(3)}:"},
            # a launch may wait for a slot as long as the whole burst lasts
            "runners": {"network": "bridge", "image_prefix": IMAGE_PREFIX,
                        "queue_timeout": 1800},
            "proxy": {"api_password": secrets.token_hex(16)},
        }
        hub = Hub(self.tmp / "hub", self.gitlab, self.redis.url, self.token,
                  overrides=overrides)
        hub.api_url = f"http://{lan.address}:{hub.hub_port}"
        hub.config["hub"]["connect_url"] = hub.api_url
        hub.extra_config = 'c.JupyterHub.log_level = "INFO"\n'  # as deployed, not DEBUG
        hub.workdir.mkdir()
        self.hub = hub.start()

    def start_runners(self) -> None:
        hub, lan = self.hub, self.lan
        run = secrets.token_hex(3)
        for i in range(self.n_runners):
            host = lan.hosts[i % len(lan.hosts)]
            work = self.tmp / f"runner-{i}"
            work.mkdir()
            proc = RunnerProcess(
                f"ld-{run}-h{host.index}-{i}", self.redis.url, self.token, work,
                f"--slots={self.slots}",
                f"--hub-url={hub.api_url}/hub/", f"--gitlab-url={self.gitlab.url}",
                f"--notebook-allow={lan.address}:{hub.hub_port}",
                f"--notebook-deny={lan.network}",
                key_prefix=hub.key_prefix, advertise_host=host.address,
                wrap=host.nsenter, env={"DOCKER_HOST": host.docker_host})
            proc.host = host
            self.runners.append(proc)
        r = hub.redis()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            alive = sum(1 for p in self.runners if r.exists(hub.keys.heartbeat(p.runner_id)))
            dead = [p for p in self.runners if p.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"runner {dead[0].runner_id} exited:\n"
                                   f"{dead[0].output()[-3000:]}")
            if alive == len(self.runners):
                return
            time.sleep(0.5)
        raise RuntimeError(f"only {alive} of {len(self.runners)} runners registered")

    def close(self) -> None:
        for proc in self.runners:
            proc.stop()
        if self.lan:
            for host in self.lan.hosts:
                if host._client is not None:
                    remove_runner_containers(host.client, {p.runner_id for p in self.runners})
        if self.hub:
            self.hub.stop()
        if self.gitlab:
            self.gitlab.stop()
        if self.redis:
            self.redis.stop()
        if self.lan:
            self.lan.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def login_all(hub: Hub, users: list[str], threads: int = 4) -> dict[str, str]:
    """The OAuth flow for every person (as a browser), then a token each for api/status."""
    def one(user: str) -> tuple[str, str]:
        hub.login(user, "pw")
        return user, hub.user_token(user)

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, users))


# -- the burst --------------------------------------------------------------------------
class Burst:
    def __init__(self, hub: Hub, launches: list[Launch], timeout: float):
        self.hub, self.launches, self.timeout = hub, launches, timeout
        self.by_key = {launch.key: launch for launch in launches}
        self.auth = {"Authorization": f"token {SERVICE_TOKEN}"}
        self.probes: list[float] = []
        self.probe_errors = 0
        self.samples: list[dict] = []
        self.running = 0  # ready servers the watcher saw last
        self.peak_running = 0
        self.done = asyncio.Event()
        self.pids: dict[str, int] = {}

    async def run(self) -> None:
        api = self.hub.url + "/hub/api"
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=120)) as s:
            self.s, self.api = s, api
            side = [asyncio.create_task(t) for t in (self.watch(), self.probe(), self.sample())]
            self.start = time.perf_counter()
            outcomes = await asyncio.gather(*(self.one(launch) for launch in self.launches),
                                            return_exceptions=True)
            for launch, outcome in zip(self.launches, outcomes, strict=True):
                if isinstance(outcome, BaseException) and not launch.error:
                    launch.error = f"driver: {type(outcome).__name__}: {outcome}"[:200]
            self.end = time.perf_counter()
            self.done.set()
            await asyncio.gather(*side)

    async def one(self, launch: Launch) -> None:
        body = {"user_options": {"project": PROJECT, "ref": "main"}}
        url = f"{self.api}/users/{launch.user}/servers/{launch.server}"
        launch.posted = time.perf_counter()
        while True:
            try:
                async with self.s.post(url, json=body, headers=self.auth) as r:
                    status, text, retry = r.status, await r.text(), r.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                launch.error = f"POST: {type(e).__name__}"
                return
            if status == 429:
                launch.retries_429 += 1
                await asyncio.sleep(min(float(retry or 1), 5.0))
                continue
            if status not in (201, 202):
                launch.error = f"POST {status}: {text[:200]}"
                return
            launch.answered = time.perf_counter()
            break
        try:
            await asyncio.wait_for(launch.event.wait(), self.timeout)
        except asyncio.TimeoutError:
            launch.error = launch.error or "not ready in time"
            return
        if launch.error:
            return
        await self.check_status(launch)
        await self.stop(launch, url)  # also when api/status failed: free the slot

    async def check_status(self, launch: Launch) -> None:
        url = f"{self.hub.url}/user/{launch.user}/{launch.server}/api/status"
        headers = {"Authorization": f"token {launch.token}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with self.s.get(url, headers=headers, allow_redirects=False) as r:
                    if r.status == 200:
                        launch.status = time.perf_counter()
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        launch.error = "api/status never 200 through the proxy"

    async def stop(self, launch: Launch, url: str) -> None:
        try:
            async with self.s.delete(url, headers=self.auth) as r:
                status = r.status
            if status not in (202, 204):
                launch.error = f"DELETE {status}"
                return
            user_url = f"{self.api}/users/{launch.user}"
            while status == 202:  # still stopping: until the server is gone
                await asyncio.sleep(0.5)
                async with self.s.get(user_url, headers=self.auth) as r:
                    servers = (await r.json()).get("servers", {}) if r.status == 200 else {}
                if launch.server not in servers:
                    break
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            launch.error = f"stop: {type(e).__name__}"
            return
        launch.stopped = time.perf_counter()

    async def watch(self) -> None:
        """Every 0.25 s: which servers the hub lists ready or pending (a paged GET
        /users?state=active); a launch whose POST was answered and that is neither
        any more has failed."""
        while not self.done.is_set():
            asked = time.perf_counter()
            active = await self.active_servers()
            if active is None:
                await asyncio.sleep(0.25)
                continue
            now = time.perf_counter()
            ready = {key for key, is_ready in active.items() if is_ready}
            missing: list[Launch] = []
            self.running = len(ready)
            self.peak_running = max(self.peak_running, self.running)
            for launch in self.launches:
                if launch.ready or launch.error or not launch.answered:
                    continue
                if launch.key in ready:
                    launch.ready = now
                    launch.event.set()
                elif launch.key not in active and launch.answered < asked:
                    missing.append(launch)
            # the paged listing shifts while servers come and go: ask the user itself
            for launch in missing:
                state = await self.server_state(launch)
                if state == "ready":
                    launch.ready = time.perf_counter()
                    launch.event.set()
                elif state == "gone":
                    launch.error = "spawn failed (the hub dropped the pending server)"
                    launch.event.set()
            await asyncio.sleep(0.25)

    async def server_state(self, launch: Launch) -> str:
        """"ready", "pending" or "gone" as ``GET /users/<name>`` says ("" if no answer)."""
        try:
            async with self.s.get(f"{self.api}/users/{launch.user}", headers=self.auth) as r:
                if r.status != 200:
                    return ""
                server = (await r.json()).get("servers", {}).get(launch.server)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return ""
        if server is None:
            return "gone"
        return "ready" if server.get("ready") else "pending"

    async def active_servers(self) -> dict[tuple[str, str], bool] | None:
        """(user, server) -> ready, of every active server (None: the hub did not answer)."""
        found: dict[tuple[str, str], bool] = {}
        offset = 0
        while True:
            try:
                async with self.s.get(f"{self.api}/users", headers=self.auth, params={
                        "state": "active", "limit": "200", "offset": str(offset)}) as r:
                    if r.status != 200:
                        return None
                    page = await r.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return None
            for user in page:
                for name, server in (user.get("servers") or {}).items():
                    found[(user["name"], name)] = bool(server.get("ready"))
            if len(page) < 200:
                return found
            offset += 200

    async def probe(self) -> None:
        url = f"{self.api}/users/{self.launches[0].user}"
        while not self.done.is_set():
            start = time.perf_counter()
            try:
                async with self.s.get(url, headers=self.auth) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                self.probes.append(time.perf_counter() - start)
            else:
                self.probe_errors += 1
            await asyncio.sleep(0.1)

    async def sample(self) -> None:
        while not self.done.is_set():
            self.samples.append(self.read_procs())
            await asyncio.sleep(1.0)
        self.samples.append(self.read_procs())

    def read_procs(self) -> dict:
        out = {"t": time.perf_counter(), "running": self.running}
        for name, pid in self.pids.items():
            out[name] = (cpu_seconds(pid), rss_mb(pid))
        return out


# -- checks after the burst ------------------------------------------------------------
def claims(runners: list[RunnerProcess]) -> tuple[Counter, dict[str, set[str]]]:
    """Job id -> claim count, and job id -> runners that logged its claim."""
    count: Counter = Counter()
    who: dict[str, set[str]] = {}
    for proc in runners:
        for job_id in CLAIMED.findall(proc.output()):
            count[job_id] += 1
            who.setdefault(job_id, set()).add(proc.runner_id)
    return count, who


PHASES = ("queued", "claimed", "fetching", "building", "starting", "running", "stopping",
          "stopped")


def phase_seconds(hub: Hub, jobs: list[dict]) -> dict[str, dict[str, float]]:
    """Median and p95 seconds from each state to the next one the job reached, read
    from the state entries of every job's log stream (their ``ts``)."""
    r = hub.redis()
    spans: dict[str, list[float]] = {}
    for job in jobs:
        first: dict[str, float] = {}
        for _, entry in r.xrange(hub.keys.log(job["id"])):
            if entry.get("kind") == "state" and entry.get("state") not in first:
                first[entry["state"]] = float(entry["ts"])
        reached = [p for p in PHASES if p in first]
        for a, b in zip(reached, reached[1:], strict=False):
            spans.setdefault(f"{a} -> {b}", []).append(first[b] - first[a])
    return {name: {"p50": round(statistics.median(v), 2), "p95": round(percentile(v, 95), 2),
                   "n": len(v)} for name, v in spans.items()}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def runner_rss(runners: list[RunnerProcess]) -> list[float]:
    return [rss_mb(p.proc.pid) for p in runners if p.proc.poll() is None]


def analyse(stack: Stack, burst: Burst, idle_before: list[float]) -> dict:
    hub = stack.hub
    launches = burst.launches
    jobs = [j for j in hub.jobs() if j.get("server_name") == "load"]
    # the stops were asked for; give the records a moment to say "stopped"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(j.get("state") not in ("stopped", "failed")
                                              for j in jobs):
        time.sleep(1)
        jobs = [j for j in hub.jobs() if j.get("server_name") == "load"]
    states = Counter(j.get("state", "?") for j in jobs)
    count, who = claims(stack.runners)
    host_of = {p.runner_id: p.host.name for p in stack.runners}
    double = sorted(j for j, n in count.items() if n > 1)
    wrong_runner = sorted(j["id"] for j in jobs if j.get("runner")
                          and who.get(j["id"]) and who[j["id"]] != {j["runner"]})
    per_host = Counter(host_of.get(j.get("runner", ""), "none") for j in jobs)
    per_runner = Counter(j.get("runner", "none") for j in jobs)
    done = [launch for launch in launches if launch.status and not launch.error]
    lost = [launch for launch in launches if not launch.status]
    errors = Counter(launch.error.split(":")[0] for launch in launches if launch.error)
    latency = [launch.status - launch.posted for launch in done]
    wall = burst.end - burst.start
    first, last = burst.samples[0], burst.samples[-1]

    def cpu(name: str) -> float:
        return last[name][0] - first[name][0] if name in first else float("nan")

    def rss(name: str, pick) -> float:
        return pick(s[name][1] for s in burst.samples if name in s)

    peak = max(burst.samples, key=lambda s: s["running"])
    per100 = 100 / max(len(done), 1)
    procs = {}
    for name in burst.pids:
        base = first[name][1]
        grow = peak[name][1] - base
        procs[name] = {
            "cpu_s": round(cpu(name), 1),
            "cpu_s_per_100_launches": round(cpu(name) * per100, 1),
            "rss_mb_before": round(base, 1),
            "rss_mb_max": round(rss(name, max), 1),
            "rss_mb_at_peak_running": round(peak[name][1], 1),
            "rss_mb_growth_per_100_running":
                round(grow * 100 / peak["running"], 1) if peak["running"] else None,
        }
    idle_after = runner_rss(stack.runners)
    return {
        "scale": {"hosts": stack.n_hosts, "runners": stack.n_runners, "slots": stack.slots,
                  "launches": len(launches),
                  "concurrent_spawn_limit": stack.spawn_limit if stack.spawn_limit
                  is not None else "default (100)"},
        "setup_s": {k: round(v, 1) for k, v in stack.timings.items()},
        "completed": len(done),
        "lost": len(lost),
        "errors": dict(errors),
        "http_429": sum(launch.retries_429 for launch in launches),
        "launches_with_429": sum(1 for launch in launches if launch.retries_429),
        "job_records": len(jobs),
        "job_states": dict(states),
        "claims_logged": sum(count.values()),
        "double_claimed": len(double) + len(wrong_runner),
        "claims_per_host": dict(sorted(per_host.items())),
        "runners_used": sum(1 for r in per_runner if r != "none"),
        "burst_s": round(wall, 1),
        "launches_per_s": round(len(done) / wall, 2),
        "launch_s": {"p50": round(percentile(latency, 50), 2),
                     "p95": round(percentile(latency, 95), 2),
                     "max": round(max(latency, default=float("nan")), 2)},
        "hub_api_ms": {"probes": len(burst.probes), "errors": burst.probe_errors,
                       "p50": round(percentile(burst.probes, 50) * 1000, 1),
                       "p99": round(percentile(burst.probes, 99) * 1000, 1),
                       "max": round(max(burst.probes, default=float("nan")) * 1000, 1)},
        "peak_running": peak["running"],
        "phases_s": phase_seconds(hub, jobs),
        "processes": procs,
        "runner_rss_mb_idle_before": {"median": round(statistics.median(idle_before), 1),
                                      "max": round(max(idle_before), 1)},
        "runner_rss_mb_idle_after": {"median": round(statistics.median(idle_after), 1),
                                     "max": round(max(idle_after), 1)}
        if idle_after else None,
    }


# -- the whole run ----------------------------------------------------------------------
def results(hosts: int, runners: int, slots: int, launches: int,
            spawn_limit: int | None = None, timeout: float = 1800) -> dict:
    """Run the load benchmark at this scale; the figures as a dict (see :func:`analyse`)."""
    stack = Stack(hosts, runners, slots, launches, spawn_limit)
    try:
        print(f"load: {hosts} hosts, {runners} runners x {slots} slots, {launches} launches",
              flush=True)
        stack.start()
        users = [f"u{i:04d}" for i in range(launches)]
        tokens = stack.timed(f"{launches} OAuth logins", login_all, stack.hub, users)
        time.sleep(3)  # let the runners settle: idle RSS
        idle_before = runner_rss(stack.runners)
        items = [Launch(user=u, token=tokens[u]) for u in users]
        burst = Burst(stack.hub, items, timeout)
        hub_pid = stack.hub.process.proc.pid
        burst.pids = {"hub": hub_pid, "redis": stack.redis.proc.pid}
        traefik = child_named(hub_pid, "traefik")
        if traefik:
            burst.pids["traefik"] = traefik
        print("  burst ...", flush=True)
        asyncio.run(burst.run())
        time.sleep(3)  # idle again
        out = analyse(stack, burst, idle_before)
        if out["lost"]:
            out["lost_examples"] = [
                {"user": launch.user, "error": launch.error,
                 "job": {k: v for k, v in (stack.hub.job_of(launch.user, "load") or {}).items()
                         if k in ("state", "runner", "message", "error")}}
                for launch in items if not launch.status][:5]
        return out
    finally:
        stack.close()


def report(out: dict) -> None:
    sc = out["scale"]
    print(f"\nload: {sc['hosts']} hosts, {sc['runners']} runners x {sc['slots']} slots, "
          f"{sc['launches']} launches in one burst (concurrent_spawn_limit "
          f"{sc['concurrent_spawn_limit']})")
    print(f"completed {out['completed']}, lost {out['lost']} {out['errors'] or ''}, "
          f"double-claimed {out['double_claimed']}, 429s {out['http_429']} "
          f"(on {out['launches_with_429']} launches)")
    print(f"job records {out['job_records']} {out['job_states']}, claims logged "
          f"{out['claims_logged']}, runners used {out['runners_used']}")
    print(f"claims per host: {out['claims_per_host']}")
    print(f"burst {out['burst_s']} s, {out['launches_per_s']} launches/s, launch "
          f"(POST -> api/status 200, queue included) p50 {out['launch_s']['p50']} s, "
          f"p95 {out['launch_s']['p95']} s, max {out['launch_s']['max']} s")
    api = out["hub_api_ms"]
    print(f"hub API GET /users/x during the burst: p50 {api['p50']} ms, p99 {api['p99']} ms, "
          f"max {api['max']} ms ({api['probes']} probes, {api['errors']} failed)")
    print(f"peak running {out['peak_running']}")
    for name, p in out["processes"].items():
        print(f"  {name:8s} CPU {p['cpu_s']} s ({p['cpu_s_per_100_launches']} s per 100 "
              f"launches), RSS {p['rss_mb_before']} -> max {p['rss_mb_max']} MB "
              f"(+{p['rss_mb_growth_per_100_running']} MB per 100 running)")
    print(f"idle runner RSS: before {out['runner_rss_mb_idle_before']}, after "
          f"{out['runner_rss_mb_idle_after']} MB")
    print("job phases (from the job logs), p50 / p95 s: " + ", ".join(
        f"{name} {v['p50']} / {v['p95']}" for name, v in out["phases_s"].items()))
    for example in out.get("lost_examples", []):
        print(f"  lost: {example}")


def main() -> None:
    # a SIGTERM (timeout, kill) unwinds through results()' finally: no hosts left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="1 host, 4 runners, 20 launches")
    scale.add_argument("--full", action="store_true", help="5 hosts, 50 runners, 500 launches")
    parser.add_argument("--hosts", type=int)
    parser.add_argument("--runners", type=int)
    parser.add_argument("--slots", type=int)
    parser.add_argument("--launches", type=int)
    parser.add_argument("--spawn-limit", type=int, default=None,
                        help="hub.concurrent_spawn_limit (default: JupyterHub's 100)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    hosts, runners, slots, launches = SCALES[
        "quick" if args.quick else "full" if args.full else "default"]
    out = results(args.hosts or hosts, args.runners or runners, args.slots or slots,
                  args.launches or launches, args.spawn_limit)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
