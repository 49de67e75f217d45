"""The whole stack on real services: JupyterHub + CHP, booklab-runner, Docker.

The hub runs as a real ``jupyterhub`` process loading the project's own
``jupyterhub_config.py`` and a ``config.yml`` written by the fixture, so the
operator's configuration path is what the tests exercise. (We chose this over
``jupyterhub.tests``' in-process MockHub: the spawner, config loader and proxy
are then tested exactly as deployed, and the hub's event loop stays separate
from the test's. Unit-level spawner tests may still use MockHub later.)
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import redis as syncredis
import requests
import yaml

from booklab_spawner.keys import Keys
from tests.services import (
    ATTEMPTS,
    NOTEBOOK_IMAGE,
    PortTaken,
    artifacts_dir,
    free_ports,
    remove_images,
    remove_runner_containers,
    require_docker,
    require_image,
    runner_redis_url,
    runner_user,
    wait_listening,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVICE_TOKEN = secrets.token_hex(16)
E2E_IMAGE_PREFIX = "booklab-e2e/"
_E2E_RUNNERS: set[str] = set()  # runner ids this test process started

DEMO_DOCKERFILE = f"""\
FROM {NOTEBOOK_IMAGE}
COPY --chown=1000:1000 . /home/jovyan/
WORKDIR /home/jovyan
"""


# runner options for a test that kills a runner and waits for its heartbeat to expire:
# 4 s instead of the default 30 s, through the runner's own options (a beat every second
# leaves three to miss under load before a live runner would be taken for dead)
QUICK_HEARTBEAT_TTL = 4
QUICK_HEARTBEAT = (f"--heartbeat-ttl={QUICK_HEARTBEAT_TTL}", "--heartbeat-interval=1")


def slow_build_step(marker: str, seconds: int) -> str:
    """A Dockerfile line that takes ``seconds`` in every build: a nonce keeps BuildKit's
    layer cache from answering it with the layer of an earlier build of the same files."""
    return f"RUN echo {marker} {secrets.token_hex(8)} && sleep {seconds}\n"


def notebook(text: str) -> str:
    """A minimal notebook with one markdown cell."""
    return json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": [text]}],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


DEMO_NOTEBOOK = notebook("# Hello from Booklab")


@pytest.fixture(scope="session")
def docker_client():
    client = require_docker()
    require_image(client)
    yield client
    remove_runner_containers(client, _E2E_RUNNERS)
    remove_images(client, E2E_IMAGE_PREFIX)


class Process:
    """A subprocess with its output in a log file, dumped when a test fails."""

    _names: dict[str, int] = {}  # log names taken in this session

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path):
        self.name = name
        # a log of its own: a second hub.log of the session is hub-2.log, so that no
        # process (or a child it left behind) writes into another's
        n = Process._names[name] = Process._names.get(name, 0) + 1
        self.log_path = artifacts_dir() / (f"{name}.log" if n == 1 else f"{name}-{n}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # children it left (a hub killed mid-shutdown leaves its Traefik): its session's
        self._kill_group()
        self._log.close()
        return self.proc.returncode

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Hub:
    def __init__(self, workdir: Path, gitlab, redis_url: str, runner_token: str,
                 overrides: dict | None = None):
        self.workdir = workdir
        self.gitlab = gitlab  # the double it logs in with (its requests_log, its data)
        self.starts = 0
        # HTTPS when the test gives the proxy a certificate: requests then trust it alone
        cert = ((overrides or {}).get("proxy") or {}).get("tls_cert")
        self.verify: str | bool = cert or True
        self.scheme = "https" if cert else "http"
        # the Traefik API port is the hub's own unless the test runs Traefik itself
        self._own_traefik_api = "api_url" not in ((overrides or {}).get("proxy") or {})
        self.client_id, self.client_secret = "booklab-test", secrets.token_hex(16)
        self.config = {
            "hub": {"ip": "127.0.0.1", "hub_ip": "127.0.0.1", "admin_users": ["admin"],
                    "data_dir": str(workdir), "db_url": f"sqlite:///{workdir}/hub.sqlite"},
            "gitlab": {"url": gitlab.url, "client_id": self.client_id, "allow_all": True},
            # a prefix per hub: no test sees another test's (or test run's) keys
            "redis": {"url": redis_url, "key_prefix": f"e2e{secrets.token_hex(4)}:"},
            # Traefik through Redis, as deployed (its API port: _use_ports)
            "proxy": {},
            # no warm servers unless a test asks (tests/test_warm.py): on a loaded
            # machine an idle warm container costs the other tests CPU
            "runners": {"network": "host", "image_prefix": E2E_IMAGE_PREFIX,
                        "start_timeout": 600, "warm_servers": 0},
        }
        _merge(self.config, overrides or {})
        self._use_ports(*free_ports(4))
        self.key_prefix = self.config["redis"]["key_prefix"]
        self.keys = Keys(self.key_prefix)  # the hub's key names, built as Booklab does
        # the runners' Redis user (RunnerProcess logs in as it): the hub checks it at start
        runner_redis_url(self.config["redis"]["url"], self.key_prefix)
        self.config["redis"].setdefault("runner_user", runner_user(self.key_prefix))
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "BOOKLAB_CONFIG": str(workdir / "config.yml"),
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
            "GITLAB_CLIENT_SECRET": self.client_secret,  # secrets through the environment
            "BOOKLAB_RUNNER_TOKEN": runner_token,
        }
        self.process: Process | None = None
        self.extra_config = ""  # more lines for the hub's config file (tests only)

    def _use_ports(self, port: int, hub_port: int, proxy_api_port: int,
                   traefik_api_port: int) -> None:
        """The hub's public (proxy), own API, CHP API and Traefik API ports, in the
        config and in the OAuth application's redirect URI."""
        self.port, self.hub_port, self.proxy_api_port = port, hub_port, proxy_api_port
        self.url = f"{self.scheme}://127.0.0.1:{port}"
        self.config["hub"].update(port=port, hub_port=hub_port)
        if self._own_traefik_api:
            self.config["proxy"]["api_url"] = f"http://127.0.0.1:{traefik_api_port}"
        self.gitlab.add_oauth_app(self.client_id, self.client_secret,
                                  redirect_uri=f"{self.url}/hub/oauth_callback",
                                  scopes=["api", "read_api", "read_user", "read_repository"])

    def own_ports(self) -> list[int]:
        """The ports the hub process (or its proxy, a child) binds."""
        proxy = self.config["proxy"]
        if proxy.get("kind", "traefik") == "chp":
            return [self.hub_port, self.proxy_api_port, self.port]
        if proxy.get("start", True):
            return [self.hub_port, urlsplit(proxy["api_url"]).port, self.port]
        return [self.hub_port]  # the test's own Traefik holds the others

    def write_config(self) -> None:
        (self.workdir / "config.yml").write_text(yaml.safe_dump(self.config))
        (self.workdir / "test_config.py").write_text(f"""
load_subconfig({str(REPO / "jupyterhub_config.py")!r})
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.JupyterHub.services = [{{"name": "booklab-test", "api_token": {SERVICE_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "booklab-test", "services": ["booklab-test"],
    "scopes": ["admin:users", "admin:servers", "tokens", "read:users",
               "admin:auth_state", "admin:server_state"]}}]
c.JupyterHub.log_level = "DEBUG"
""" + self.extra_config)

    def start(self) -> Hub:
        """Start the hub; JupyterHub and its proxy bind the ports themselves, so a first
        start that finds one taken by another process starts again on fresh ports (a
        restart keeps its ports: servers and cookies know them)."""
        for attempt in range(ATTEMPTS):
            try:
                return self._start_once()
            except PortTaken:
                self.stop()
                if self.starts or attempt == ATTEMPTS - 1:
                    raise
                self._use_ports(*free_ports(4))
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self) -> Hub:
        self.write_config()
        name = "hub" if not self.starts else f"hub-restart{self.starts}"
        self.process = Process(name, [str(BIN / "jupyterhub"), "-f", "test_config.py"],
                               self.env, self.workdir)
        wait_listening(self.process.proc, self.own_ports(), self.process.output)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.proc.poll() is not None:
                raise RuntimeError("the hub exited:\n" + self.process.output()[-4000:])
            try:
                if requests.get(f"{self.url}/hub/api", timeout=2,
                                verify=self.verify).status_code == 200:
                    self.starts += 1
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the hub did not answer:\n" + self.process.output()[-4000:])

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def restart(self) -> Hub:
        """Stop the hub process (servers keep running) and start a new one on the same
        ports, database, cookie secret and crypt key."""
        self.stop()
        return self.start()

    def api(self, method: str, path: str, token: str = SERVICE_TOKEN, **kw) -> requests.Response:
        kw.setdefault("verify", self.verify)
        return requests.request(method, f"{self.url}/hub/api{path}",
                                headers={"Authorization": f"token {token}"}, timeout=30, **kw)

    def login(self, username: str, password: str) -> requests.Session:
        """The OAuth redirect flow, as a browser would follow it."""
        s = requests.Session()
        s.verify = self.verify
        s.trust_env = False  # else $REQUESTS_CA_BUNDLE wins over s.verify
        r = s.get(f"{self.url}/hub/oauth_login", timeout=30)
        assert "/users/sign_in" in r.url, r.url
        r = s.post(r.url, data={"username": username, "password": password, "commit": "Sign in"},
                   timeout=30)
        assert r.url.startswith(self.url + "/hub/"), (r.status_code, r.url)
        return s

    def user_token(self, username: str) -> str:
        r = self.api("POST", f"/users/{username}/tokens",
                     json={"note": "booklab e2e", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def redis(self) -> syncredis.Redis:
        """A client of the hub's Redis (decoded), for looking at what Booklab stored."""
        return syncredis.Redis.from_url(self.config["redis"]["url"], decode_responses=True)

    def jobs(self) -> list[dict]:
        """Every job record under this hub's prefix."""
        r = self.redis()
        return [r.hgetall(k) for k in r.scan_iter(self.keys.job("x").removesuffix("x") + "*")]

    def job_of(self, user: str, server: str) -> dict | None:
        """The newest job of ``user``'s server ``server`` (None: it has none)."""
        mine = [j for j in self.jobs() if j.get("user") == user
                and j.get("server_name") == server]
        return max(mine, key=lambda j: float(j["created"])) if mine else None

    def proxied(self, path: str) -> str:
        return urljoin(self.url, path)


_XSRF_INPUT = re.compile(r'name="_xsrf" value="([^"]+)"')


def form_xsrf(session: requests.Session, hub: Hub) -> str:
    """The XSRF token a browser posts: the one in the form of the page it has just
    loaded (the picker). It matches the cookie the hub checks next; a token read from
    the cookie jar may not (JupyterHub ties it to the login cookie, and renews both)."""
    page = session.get(hub.url + "/hub/booklab/", timeout=30)
    found = _XSRF_INPUT.search(page.text)
    assert found, f"no XSRF token in the picker page ({page.status_code})"
    return html.unescape(found.group(1))


class RunnerProcess(Process):
    """One real ``booklab-runner`` process (every suite's), its output in tests/artifacts;
    ``extra``: more command-line options, e.g. ``--slots=4``."""

    def __init__(self, runner_id: str, redis_url: str, token: str, work_dir: Path,
                 *extra: str, key_prefix: str, advertise_host: str = "127.0.0.1",
                 wrap: tuple[str, ...] = (), env: dict[str, str] | None = None):
        """``wrap``: a command the runner runs under (e.g. ``nsenter --net=...`` for a
        runner on another host, tests/netns.py); ``env``: more environment (its
        ``DOCKER_HOST``)."""
        self.runner_id = runner_id
        self.work_dir = Path(work_dir)  # its --work-dir: checkouts, keys, build contexts
        # as deployed: the runners' own Redis user, which cannot touch Traefik's keys
        self.redis_url = runner_redis_url(redis_url, key_prefix)
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
               "BOOKLAB_REDIS_URL": self.redis_url, "BOOKLAB_RUNNER_TOKEN": token, **(env or {})}
        cmd = [*wrap, str(BIN / "booklab-runner"), f"--runner-id={runner_id}",
               f"--advertise-host={advertise_host}", f"--work-dir={work_dir}",
               f"--key-prefix={key_prefix}", "--log-level=DEBUG", *extra]
        super().__init__(f"runner-{runner_id}", cmd, env, work_dir)

    def kill(self) -> None:
        """SIGKILL: the runner dies at once, as in a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        return super().stop(sig, timeout)


@pytest.fixture
def runner_token() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def demo_gitlab(gitlab):
    """The GitLab double with alice (Developer on demo/hello) and bob (no access)."""
    return seed_demo(gitlab)


def seed_demo(gitlab):
    """Add alice (Developer on demo/hello, a Dockerfile project) and bob (no access)."""
    gitlab.add_user("alice", password="alice-pw", name="Alice")
    gitlab.add_user("bob", password="bob-pw", name="Bob")
    gitlab.add_project("demo/hello", files={
        "Dockerfile": DEMO_DOCKERFILE, "README.md": "# Hello\n",
    }, default_branch="main", visibility="private")
    gitlab.demo_sha = gitlab.commit("demo/hello", "main", {"hello.ipynb": DEMO_NOTEBOOK},
                                    message="Add a notebook")
    gitlab.add_member("demo/hello", "alice", 30)
    return gitlab


def running_hub(hub: Hub, request):
    """Start ``hub`` in its fresh work dir, yield it, stop it (log printed on failure)."""
    hub.workdir.mkdir()
    hub.start()
    yield hub
    hub.stop()
    _dump_on_failure(request, hub.process)


@pytest.fixture
def hub(demo_gitlab, redis_server, runner_token, tmp_path, request):
    yield from running_hub(Hub(tmp_path / "hub", demo_gitlab, redis_server.url, runner_token),
                           request)


@pytest.fixture
def runner(hub, redis_server, runner_token, tmp_path, docker_client, request):
    workdir = tmp_path / "runner"
    workdir.mkdir()
    proc = RunnerProcess(f"e2e-{secrets.token_hex(4)}", redis_server.url, runner_token,
                         workdir, key_prefix=hub.key_prefix)
    _E2E_RUNNERS.add(proc.runner_id)
    yield proc
    proc.stop()
    _dump_on_failure(request, proc)


def _dump_on_failure(request, process: Process | None) -> None:
    rep = getattr(request.node, "rep_call", None)
    if process and rep is not None and rep.failed:
        print(f"\n===== {process.name} log ({process.log_path}) =====")
        print(process.output()[-8000:])


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
