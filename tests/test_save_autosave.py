"""Autosave at stop (save.autosave on), on the real stack: a stop (here by an admin
through JupyterHub's API, the path the idle culler takes too) commits the server's
changes to booklab/<user>/<server>-autosave first; relaunching that branch shows them;
a server started with autosave=false is left out; the real jupyterhub-idle-culler's
stop autosaves too."""

from __future__ import annotations

import secrets

import pytest
import requests

from tests.conftest_hub import wait_until
from tests.conftest_stack import Hub, RunnerProcess, running_hub
from tests.test_e2e import wait_for_server, wait_for_stop

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def hub(demo_gitlab, redis_server, runner_token, tmp_path, request):
    yield from running_hub(Hub(tmp_path / "hub", demo_gitlab, redis_server.url, runner_token,
                               overrides={"save": {"autosave": True}}), request)


def launch(hub, token, server, ref="main", **options):
    r = hub.api("POST", f"/users/alice/servers/{server}", token=token,
                json={"user_options": {"project": "demo/hello", "ref": ref, **options}})
    assert r.status_code in (201, 202), r.text
    wait_for_server(hub, "alice", server, token)


def put(hub, token, server, path, text):
    r = requests.put(hub.proxied(f"/user/alice/{server}/api/contents/{path}"),
                     headers={"Authorization": f"token {token}"},
                     json={"type": "file", "format": "text", "content": text}, timeout=30)
    assert r.status_code in (200, 201), r.text


def log_lines(hub, job_id):
    return [f.get("message", "") for _, f in hub.redis().xrange(hub.keys.log(job_id))]


def test_stop_autosaves_and_the_autosave_branch_relaunches(hub, runner, demo_gitlab):
    gl = demo_gitlab
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    launch(hub, token, "hello")
    put(hub, token, "hello", "hello.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, '
                                            '"nbformat_minor": 5, "x": "autosaved"}')
    job = hub.job_of("alice", "hello")["id"]

    r = hub.api("DELETE", "/users/alice/servers/hello")  # an admin's stop (the service)
    assert r.status_code in (202, 204), r.text
    wait_for_stop(hub, "alice", "hello", token)

    sha = gl.head("demo/hello", "booklab/alice/hello-autosave")
    assert sha, log_lines(hub, job)
    assert gl.changed_paths("demo/hello", sha) == [("M", "hello.ipynb")]
    assert any(line.startswith("Autosave: Saved 1 file(s)") for line in log_lines(hub, job))
    tokens = hub.api("GET", "/users/alice/tokens").json()["api_tokens"]
    assert not [t for t in tokens if "autosave" in (t.get("note") or "")]

    # the next launch of that branch has the change
    launch(hub, token, "again", ref="booklab/alice/hello-autosave", autosave=False)
    r = requests.get(hub.proxied("/user/alice/again/api/contents/hello.ipynb"),
                     params={"type": "file", "format": "text", "content": "1"},
                     headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200 and '"x": "autosaved"' in r.json()["content"]

    # opted out: a change and a stop leave the autosave branch as it was
    put(hub, token, "again", "opted-out.md", "not saved\n")
    job = hub.job_of("alice", "again")["id"]
    r = hub.api("DELETE", "/users/alice/servers/again", token=token)  # her own stop
    assert r.status_code in (202, 204), r.text
    wait_for_stop(hub, "alice", "again", token)
    assert gl.head("demo/hello", "booklab/alice/hello-autosave") == sha
    assert "Autosave: off for this server" in log_lines(hub, job)


# jupyterhub-idle-culler as JupyterHub's docs configure it, culling after 20 s idle
IDLE_CULLER = """
import sys
c.JupyterHub.services.append({"name": "idle-culler", "command": [
    sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=20", "--cull-every=5"]})
c.JupyterHub.load_roles.append({"name": "idle-culler", "services": ["idle-culler"],
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]})
"""


@pytest.fixture
def culled_hub(demo_gitlab, redis_server, runner_token, tmp_path, request):
    hub = Hub(tmp_path / "hub", demo_gitlab, redis_server.url, runner_token,
              overrides={"save": {"autosave": True}})
    hub.extra_config = IDLE_CULLER
    yield from running_hub(hub, request)


@pytest.fixture
def culled_runner(culled_hub, redis_server, runner_token, tmp_path, request):
    workdir = tmp_path / "runner"
    workdir.mkdir()
    proc = RunnerProcess(f"e2e-{secrets.token_hex(4)}", redis_server.url, runner_token,
                         workdir, key_prefix=culled_hub.key_prefix)
    yield proc
    proc.stop()


def test_the_idle_culler_autosaves_the_server_it_stops(culled_hub, culled_runner, demo_gitlab):
    hub, gl = culled_hub, demo_gitlab
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    launch(hub, token, "idle")
    put(hub, token, "idle", "left-idle.md", "written, then left alone\n")
    job = hub.job_of("alice", "idle")["id"]

    wait_for_stop(hub, "alice", "idle", token, timeout=180)  # nobody asked: the culler did
    assert "(idle-culler@" in hub.process.output()  # its DELETE, in the hub's access log
    sha = gl.head("demo/hello", "booklab/alice/idle-autosave")
    assert sha, log_lines(hub, job)
    assert gl.changed_paths("demo/hello", sha) == [("A", "left-idle.md")]
    assert any(line.startswith("Autosave: Saved 1 file(s)") for line in log_lines(hub, job))


def test_a_failed_autosave_is_tried_again_while_the_server_stays_up(
        hub, runner, demo_gitlab, docker_client):
    gl = demo_gitlab
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    launch(hub, token, "retry")
    put(hub, token, "retry", "retry.md", "saved once GitLab is back\n")
    job = hub.job_of("alice", "retry")

    end_outage = gl.outage(502)  # GitLab down behind its proxy
    try:
        r = hub.api("DELETE", "/users/alice/servers/retry")
        assert r.status_code in (202, 204), r.text
        wait_until(lambda: any("trying again" in line for line in log_lines(hub, job["id"])),
                   60, "a failed autosave said it tries again")
        # the server is kept meanwhile
        assert docker_client.containers.get(job["container"]).status == "running"
    finally:
        end_outage()
    wait_for_stop(hub, "alice", "retry", token)
    sha = gl.head("demo/hello", "booklab/alice/retry-autosave")
    assert sha, log_lines(hub, job["id"])
    assert gl.changed_paths("demo/hello", sha) == [("A", "retry.md")]
    lines = log_lines(hub, job["id"])
    assert any("Autosave failed (" in line and "502" in line for line in lines), lines
    assert any(line.startswith("Autosave: Saved 1 file(s)") for line in lines), lines
