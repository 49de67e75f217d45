"""Fixtures for the hub tests: a real hub per test (with its own config and Redis key
prefix), runners named ``hb-*`` building images under ``booklab-hb/``, and helpers
that look at Redis and GitLab the way an operator would."""

from __future__ import annotations

import json
import secrets
import time

import pytest
import requests

from booklab_spawner.crypto import SecretBox
from tests.conftest_stack import Hub, RunnerProcess, _dump_on_failure
from tests.services import remove_images, remove_runner_containers

HB_IMAGE_PREFIX = "booklab-hb/"
HB_RUNNER_PREFIX = "hb-"
MAINTAINER, DEVELOPER = 40, 30


@pytest.fixture
def hb_gitlab(demo_gitlab):
    """demo_gitlab plus maria, Maintainer of demo/hello (alice is Developer, bob nothing)."""
    return add_hub_users(demo_gitlab)


# A host key line as an operator configures it (gitlab.ssh_known_hosts): with it,
# `clone_method: auto` gives Maintainers deploy keys. Most hub tests start no
# sshd, so the key is a fixed one; tests that clone over SSH use the real sshd's.
KNOWN_HOSTS_LINE = ("[127.0.0.1]:22 ssh-ed25519 "
                    "AAAAC3NzaC1lZDI1NTE5AAAAIJHkre0ttZmQfPtcIrzGw0aqQ8Xjj4L7/o+nMZ762fnJ")


def hb_gitlab_known_hosts(gitlab) -> str:
    return getattr(gitlab, "known_hosts", None) or KNOWN_HOSTS_LINE


def add_hub_users(gitlab):
    gitlab.add_user("maria", password="maria-pw", name="Maria")
    gitlab.add_member("demo/hello", "maria", MAINTAINER)
    gitlab.add_user("admin", password="admin-pw", name="Hub Admin")
    return gitlab


# JupyterHub's own setting (a tornado setting, default 10 s): how long the launch POST
# waits for the server before it answers 202. A test whose launch stays queued (no
# runner yet) uses 0 so that the POST answers at once rather than after 10 s; errors
# raised before the spawn begins (auth, validation) still come back on the POST.
NO_SPAWN_WAIT = 'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n'


@pytest.fixture
def make_hub(hb_gitlab, redis_server, runner_token, tmp_path, request):
    """``make_hub(overrides)`` starts a hub on a fresh key prefix; all stop at teardown."""
    hubs: list[Hub] = []

    def make(overrides: dict | None = None, start: bool = True, extra_config: str = ""
             ) -> Hub:
        prefix = f"hb{secrets.token_hex(3)}:"
        base = {"redis": {"key_prefix": prefix},
                "gitlab": {"ssh_known_hosts": hb_gitlab_known_hosts(hb_gitlab)},
                "runners": {"image_prefix": HB_IMAGE_PREFIX, "queue_timeout": 120}}
        for section, values in (overrides or {}).items():
            base.setdefault(section, {}).update(values)
        workdir = tmp_path / f"hub{len(hubs)}"
        workdir.mkdir()
        hub = Hub(workdir, hb_gitlab, redis_server.url, runner_token, overrides=base)
        hub.extra_config = extra_config
        hubs.append(hub)
        return hub.start() if start else hub

    yield make
    for hub in hubs:
        hub.stop()
        _dump_on_failure(request, hub.process)


@pytest.fixture
def hb_runner(redis_server, runner_token, tmp_path, docker_client, request):
    """``hb_runner(hub, *options)`` starts a booklab-runner on the hub's key prefix
    (``hb_runner(hub, *QUICK_HEARTBEAT)``: one whose death is noticed within seconds);
    ``runner_id=`` of an earlier one restarts that runner (same id and work dir)."""
    procs: list[RunnerProcess] = []

    def start(hub: Hub, *extra: str, runner_id: str | None = None) -> RunnerProcess:
        workdir = tmp_path / (f"runner-{runner_id}" if runner_id else f"runner{len(procs)}")
        workdir.mkdir(exist_ok=True)
        proc = RunnerProcess(runner_id or f"{HB_RUNNER_PREFIX}{secrets.token_hex(3)}",
                             redis_server.url, runner_token, workdir, *extra,
                             key_prefix=hub.key_prefix)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
        _dump_on_failure(request, proc)
    remove_runner_containers(docker_client, {proc.runner_id for proc in procs})
    remove_images(docker_client, HB_IMAGE_PREFIX)


# -- helpers -----------------------------------------------------------------------
def jobs_of(hub: Hub, user: str, server: str | None = None) -> list[dict]:
    """``user``'s jobs (of ``server`` if given) under the hub's prefix, oldest first."""
    jobs = hub.jobs()
    return sorted((j for j in jobs if j.get("user") == user
                   and (server is None or j.get("server_name") == server)),
                  key=lambda j: float(j["created"]))


def queue(hub: Hub) -> list[str]:
    """The job ids waiting in the hub's queue, oldest first."""
    return hub.redis().lrange(hub.keys.queue, 0, -1)


def job_secrets(hub: Hub, job_id: str, runner_token: str) -> dict:
    blob = hub.redis().get(hub.keys.token(job_id))
    assert blob, f"no secrets for job {job_id}"
    return SecretBox(runner_token).decrypt(blob)


def log_states(hub: Hub, job_id: str) -> list[dict]:
    """The state entries of a job's log, oldest first (``state``, ``message``, ``ts``)."""
    entries = hub.redis().xrange(hub.keys.log(job_id))
    return [{**fields, "ts": float(fields["ts"])} for _, fields in entries
            if fields.get("kind") == "state"]


def wait_log_state(hub: Hub, job_id: str, state: str, timeout: float = 300) -> dict:
    """Block on the job's log stream (XREAD) until a ``state`` entry; that entry. It
    returns as the entry is written, so a test can act inside a phase."""
    r, last = hub.redis(), "0-0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, entries in r.xread({hub.keys.log(job_id): last}, block=1000) or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("kind") == "state" and fields.get("state") == state:
                    return {**fields, "ts": float(fields["ts"])}
    raise AssertionError(f"job {job_id} did not reach {state} in {timeout} s: "
                         f"{log_states(hub, job_id)}")


def start_server(hub: Hub, user: str, server: str, token: str, project: str = "demo/hello",
                 ref: str = "main") -> requests.Response:
    return hub.api("POST", f"/users/{user}/servers/{server}", token=token,
                   json={"user_options": {"project": project, "ref": ref}})


def wait_until(predicate, timeout: float = 120, what: str = "condition", interval=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not reached after {timeout} s")


def server_model(hub: Hub, user: str, server: str) -> dict | None:
    return hub.api("GET", f"/users/{user}").json().get("servers", {}).get(server)


def wait_ready(hub: Hub, user: str, server: str, timeout: float = 600) -> dict:
    def ready():
        srv = server_model(hub, user, server)
        if srv is None:
            raise AssertionError(f"server {user}/{server} went away while starting")
        return srv if srv.get("ready") else None
    return wait_until(ready, timeout, f"{user}/{server} ready", interval=0.5)


def wait_gone(hub: Hub, user: str, server: str, timeout: float = 180) -> None:
    wait_until(lambda: server_model(hub, user, server) is None, timeout,
               f"{user}/{server} stopped")


def spawn_error(hub: Hub, user: str, server: str, response: requests.Response,
                timeout: float = 180) -> str:
    """The message a user sees for a failed launch: from the API answer if the launch
    failed at once, else from the progress stream's 'failed' event, without the
    "Spawn failed: " JupyterHub puts before the spawner's reason when the spawn's
    future ended before Booklab's progress could report the failure itself."""
    if response.status_code >= 400:
        return response.json()["message"]

    def settled():
        # JupyterHub's User.stop() clears _spawn_pending first, and a failed spawn
        # calls it before its future is done: a request in that window gets 400
        # "not starting". The failure is kept once the stop is through.
        try:
            return (progress_events(hub, user, server, timeout=timeout),)
        except NotStarting:
            return None

    (events,) = wait_until(settled, timeout, f"{user}/{server}'s failed spawn settled",
                           interval=0.2)
    for event in events:
        if event.get("failed"):
            return event["message"].removeprefix("Spawn failed: ")
    raise AssertionError("the launch did not fail")


class NotStarting(AssertionError):
    """The hub's progress endpoint answered 400: the server is not starting (now)."""


def progress_events(hub: Hub, user: str, server: str, token: str | None = None,
                    timeout: float = 600) -> list[dict]:
    """All events of the hub's progress stream (/hub/api/users/:u/servers/:s/progress)."""
    kw = {"token": token} if token else {}
    url_path = f"/users/{user}/servers/{server}/progress"
    headers = {"Accept": "text/event-stream"}
    with requests.get(f"{hub.url}/hub/api{url_path}", stream=True, timeout=timeout,
                      headers={**headers, "Authorization":
                               f"token {kw.get('token') or _service_token()}"}) as resp:
        if resp.status_code == 400 and "is not starting" in resp.text:
            raise NotStarting(resp.text[:300])
        assert resp.status_code == 200, resp.text[:300]
        events = []
        for line in resp.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[5:]))
        return events


def _service_token() -> str:
    from tests.conftest_stack import SERVICE_TOKEN
    return SERVICE_TOKEN


def gitlab_token_of(gitlab, username: str) -> str:
    """The newest live OAuth access token GitLab issued to ``username``."""
    user = gitlab.store.user_by_name(username)
    live = [t for t in gitlab.store.tokens.values()
            if t.user_id == user.id and not t.revoked and not t.expired()]
    assert live, f"no live token for {username}"
    return max(live, key=lambda t: t.created_at).access_token
