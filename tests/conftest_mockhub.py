"""The in-process layer: pytest-jupyterhub's MockHub running Booklab's own plugins.

``inproc_hub(overrides)`` starts ``jupyterhub.tests.mocking.MockHub`` (the real hub
application, in the test's event loop) through pytest-jupyterhub's ``hub_app``,
configured the way ``jupyterhub_config.py`` does it: a ``config.yml`` read by
``booklab_hub.config.load`` and mapped by ``apply``. It talks to the GitLab double
(alice Developer and maria Maintainer of demo/hello, bob nothing) and to the
session's real redis-server, under a key prefix of its own, behind the session's
one real configurable-http-proxy (``inproc_proxy``). No runner process: a
test that needs one plays it through ``JobStore`` (``InprocHub.claim``).

Users log in through the double's real OAuth flow (``InprocHub.login``), so their
auth state holds tokens the double issued. See docs/testing.md ("Two layers").
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from jupyterhub.crypto import CryptKeeper
from jupyterhub.tests.utils import AsyncSession, api_request, public_url
from jupyterhub.utils import random_port
from traitlets.config import Config

from booklab_hub.config import apply, load
from booklab_spawner import registry
from booklab_spawner.jobs import JobStore
from booklab_spawner.keys import Keys
from booklab_spawner.redis_client import get_redis
from tests.conftest_hub import KNOWN_HOSTS_LINE, add_hub_users
from tests.conftest_stack import _merge
from tests.services import ATTEMPTS, PortTaken, artifacts_dir, free_ports, wait_listening

INPROC_RUNNER = "inproc-runner"
CLIENT_ID = "booklab-inproc"
# the spawn request waits this long for the spawn to end before answering 202; the
# launches a test finishes (playing the runner) end well within it
SLOW_SPAWN_TIMEOUT = 60
# whatever a test waits on (a claim, a spawn's end) gives up after this: a hang fails
WAIT_LIMIT = 60



@dataclass(frozen=True)
class Proxy:
    """A running configurable-http-proxy: public port, API port, API token."""

    port: int
    api_port: int
    token: str


@pytest.fixture(scope="session")
def inproc_proxy():
    """One real configurable-http-proxy for the session's in-process hubs.

    Starting CHP (node) is half of a MockHub's start; the hubs run one after the
    other, and each hub's start replaces the routes of the one before it."""
    chp = shutil.which("configurable-http-proxy")
    if chp is None:
        pytest.fail("configurable-http-proxy is not installed: scripts/setup-system.sh "
                    "installs it from npm")
    proc, proxy = start_chp(chp, artifacts_dir() / "inproc-chp.log")
    try:
        yield proxy
    finally:
        proc.terminate()
        proc.wait(10)


def start_chp(chp: str, log_path: Path, ports: tuple[int, int] | None = None
              ) -> tuple[subprocess.Popen, Proxy]:
    """configurable-http-proxy on loopback ports (``ports`` first if given, else fresh
    ones). It binds them itself (no port 0, no socket handed over): when another
    process took one first, it starts again on fresh ports."""
    for attempt in range(ATTEMPTS):
        proxy = Proxy(*(ports if ports and not attempt else free_ports(2)),
                      secrets.token_hex(32))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [chp, "--ip", "127.0.0.1", "--port", str(proxy.port), "--api-ip",
                 "127.0.0.1", "--api-port", str(proxy.api_port), "--log-level", "warn"],
                env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": proxy.token},
                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(proc, [proxy.api_port, proxy.port],
                           lambda: log_path.read_text(errors="replace"))
            return proc, proxy
        except PortTaken:
            proc.terminate()
            proc.wait(10)
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def booklab_config(workdir: Path, gitlab, redis_url: str, runner_token: str,
                   proxy: Proxy, overrides: dict | None = None) -> Config:
    """JupyterHub config as jupyterhub_config.py builds it from a config.yml, plus
    what MockHub needs (the session's proxy, the spawn request's patience)."""
    secret = secrets.token_hex(16)
    port = proxy.port
    gitlab.add_oauth_app(CLIENT_ID, secret, f"http://127.0.0.1:{port}/hub/oauth_callback",
                         scopes=["api", "read_api", "read_user", "read_repository"])
    yml = _merge({
        "hub": {"ip": "127.0.0.1", "port": port, "hub_ip": "127.0.0.1",
                "hub_port": random_port(), "admin_users": ["admin"],
                "data_dir": str(workdir),
                # the test's own database, never a jupyterhub.sqlite in the checkout
                "db_url": f"sqlite:///{workdir / 'jupyterhub.sqlite'}"},
        "gitlab": {"url": gitlab.url, "client_id": CLIENT_ID, "allow_all": True,
                   "ssh_known_hosts": KNOWN_HOSTS_LINE},
        "redis": {"url": redis_url, "key_prefix": f"inproc{secrets.token_hex(3)}:"},
        "runners": {"network": "host", "image_prefix": "booklab-inproc/"},
        # the session's one configurable-http-proxy (Traefik is the integration layer's)
        "proxy": {"kind": "chp"},
    }, overrides or {})
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(yml))
    c = Config()
    # secrets through the environment, as in a deployment (load() reads these names)
    apply(c, load(str(path), environ={"GITLAB_CLIENT_SECRET": secret,
                                      "BOOKLAB_RUNNER_TOKEN": runner_token}))
    # MockHub's own default serves under /@/space%20word/; Booklab's callback URL (and
    # a deployment) has the hub at the root of hub.ip:hub.port
    c.JupyterHub.bind_url = f"http://127.0.0.1:{port}/"
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": SLOW_SPAWN_TIMEOUT}
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy.api_port}"
    c.ConfigurableHTTPProxy.auth_token = proxy.token
    return c


@dataclass
class InprocHub:
    """A started MockHub with Booklab's plugins, and what a test looks at around it."""

    app: Any  # jupyterhub.tests.mocking.MockHub
    gitlab: Any  # tests.gitlab_double.GitLabDouble
    keys: Keys

    async def launch(self, username: str, server: str, options: dict
                     ) -> tuple[asyncio.Task, dict[str, str]]:
        """Start a launch and play the runner that takes its job: the pending spawn
        request and the job record as the hub wrote it. Fails if the launch ends first."""
        request = asyncio.ensure_future(self.spawn(username, server, options))
        claim = asyncio.ensure_future(self.claim())
        done, _ = await asyncio.wait({request, claim}, timeout=WAIT_LIMIT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if claim not in done:
            claim.cancel()
            r = request.result() if request in done else None
            pytest.fail(f"no job was queued; the spawn request answered "
                        f"{r and (r.status_code, r.text)}")
        return request, await self.store.get(claim.result())

    async def end_launch(self, request: asyncio.Task, job_id: str) -> None:
        """Fail the job as a runner would; the spawn request then reports that reason."""
        reason = "The test's runner ended this launch"
        await self.store.fail(job_id, reason)
        r = await asyncio.wait_for(request, WAIT_LIMIT)
        assert (r.status_code, r.json()["message"]) == (500, reason)

    @property
    def redis_url(self) -> str:
        return self.app.config.BooklabSpawner.redis_url

    @property
    def store(self) -> JobStore:
        return JobStore(get_redis(self.redis_url), self.keys)

    def user(self, name: str):
        return self.app.users[name]

    async def login(self, username: str, password: str | None = None) -> AsyncSession:
        """The OAuth redirect flow through the double's sign-in form, as a browser."""
        s = AsyncSession()
        r = await s.get(public_url(self.app, path="hub/oauth_login"))
        assert "/users/sign_in" in r.url, r.url
        r = await s.post(r.url, data={"username": username,
                                      "password": password or f"{username}-pw"})
        assert r.url.startswith(public_url(self.app, path="hub/")), (r.status_code, r.url)
        return s

    async def spawn(self, username: str, server: str, options: dict):
        """POST /hub/api/users/<u>/servers/<s> with user_options, as the user."""
        return await api_request(self.app, "users", username, "servers", server,
                                 method="post", name=username,
                                 json={"user_options": options})

    async def spawn_error(self, username: str, server: str, options: dict) -> tuple[int, str]:
        """A launch that must fail before any runner could take it: status, message."""
        r = await self.spawn(username, server, options)
        assert r.status_code >= 400, (r.status_code, r.text)
        return r.status_code, r.json()["message"]

    async def register_runner(self) -> str:
        """Play a live runner that has registered (heartbeat alive for 30 s)."""
        await registry.register(get_redis(self.redis_url), self.keys, INPROC_RUNNER,
                               {"host": "127.0.0.1", "slots": 1})
        return INPROC_RUNNER

    async def claim(self) -> str:
        """Play a live runner: register it and take the next queued job (BLMOVE)."""
        await self.register_runner()
        job_id = await self.store.claim(INPROC_RUNNER, timeout=WAIT_LIMIT)
        assert job_id, f"no job was queued within {WAIT_LIMIT} s"
        return job_id

    async def jobs(self, user: str | None = None) -> list[dict[str, str]]:
        """The job records under this hub's prefix (of ``user`` if given), newest first."""
        jobs = await self.store.find_many(await self.store.recent(100))
        return [j for j in jobs if user is None or j.get("user") == user]

    async def auth_state(self, username: str) -> dict:
        return await self.user(username).get_auth_state()


@pytest.fixture
async def inproc_hub(hub_app, inproc_proxy, demo_gitlab, redis_server, runner_token,
                     tmp_path, monkeypatch):
    """``await inproc_hub(overrides)``: a started MockHub; config.yml sections in
    ``overrides`` are merged over the defaults above."""
    gitlab = add_hub_users(demo_gitlab)
    # auth state is encrypted: a key of this test's own, read when the keeper is made
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    CryptKeeper.clear_instance()

    apps = []

    async def make(overrides: dict | None = None) -> InprocHub:
        config = booklab_config(tmp_path, gitlab, redis_server.url, runner_token,
                                inproc_proxy, overrides)
        apps.append(await hub_app(config))
        return InprocHub(apps[-1], gitlab, Keys(config.BooklabSpawner.key_prefix))

    yield make
    for app in apps:
        _stop_timers(app)
    CryptKeeper.clear_instance()


def _stop_timers(app) -> None:
    """Stop the hub's periodic callbacks, as JupyterHub.stop() does.

    hub_app's teardown stops the HTTP server and cancels the loop's tasks but leaves
    these running; on the session's event loop a finished hub would go on checking
    the proxy's routes (and put its own back) while the next test's hub runs."""
    if app.metrics_collector is not None:
        app.metrics_collector.stop()
    for callback in app._periodic_callbacks.values():
        callback.stop()

