"""A hub restarted during a launch (real hub, runner, Docker): the launch goes on.

JupyterHub checks at start-up every server its database says was started
(``poll()``, then ``get_url()`` and a request to the server); a check may take as
long as it needs, in the background after ``init_spawners_timeout``, and the
hub adds the route when the checks are done. The spawner follows a launch
still under way through that check, with the same phase timeouts as start(),
so the restarted hub leaves it running, or failed with the job's reason."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest_hub import (
    NO_SPAWN_WAIT,
    log_states,
    queue,
    start_server,
    wait_log_state,
    wait_ready,
    wait_until,
)
from tests.conftest_stack import DEMO_DOCKERFILE, slow_build_step

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _reachable(hub, user: str, server: str, token: str) -> list[str]:
    """The server's files, through the proxy with the user's token."""
    r = requests.get(hub.proxied(f"/user/{user}/{server}/api/contents"),
                     headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text[:500]
    return sorted(item["name"] for item in r.json()["content"])


def test_a_launch_building_when_the_hub_restarts_ends_up_running(
        make_hub, hb_runner, hb_gitlab):
    """The hub stops while the runner builds (a slow build step) and starts again: the
    same job reaches ``running`` after the new hub process is up, and the server is
    ready and answers through the proxy."""
    hub = make_hub(extra_config=NO_SPAWN_WAIT)
    hb_runner(hub)
    hb_gitlab.commit("demo/hello", "main", {
        "Dockerfile": DEMO_DOCKERFILE + slow_build_step("restart-step", 12)})
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "busy", token).status_code in (201, 202)
    job_id = wait_until(lambda: hub.job_of("alice", "busy"), 60, "the job")["id"]
    wait_log_state(hub, job_id, "building")

    hub.stop()
    down = time.time()
    assert hub.job_of("alice", "busy")["state"] == "building"
    hub.start()
    wait_ready(hub, "alice", "busy")
    job = hub.job_of("alice", "busy")
    assert (job["id"], job["state"]) == (job_id, "running")
    running = next(e["ts"] for e in log_states(hub, job_id) if e["state"] == "running")
    assert running > down  # the build went on across the restart
    assert "Dockerfile" in _reachable(hub, "alice", "busy", token)
    assert queue(hub) == []


def test_a_launch_queued_when_the_hub_restarts_runs_once_a_runner_takes_it(
        make_hub, hb_runner):
    """A launch still queued (no runner yet) when the hub restarts stays queued under
    the restarted hub, which follows it: a runner started afterwards takes the same
    job, and the server is ready and reachable, with nothing left on the queue."""
    hub = make_hub(extra_config=NO_SPAWN_WAIT)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "again", token).status_code in (201, 202)
    job_id = wait_until(lambda: hub.job_of("alice", "again"), 60, "the queued job")["id"]

    hub.restart()
    assert hub.job_of("alice", "again")["state"] == "queued"
    assert queue(hub) == [job_id]
    hb_runner(hub)
    wait_ready(hub, "alice", "again")
    job = hub.job_of("alice", "again")
    assert (job["id"], job["state"]) == (job_id, "running")
    assert "Dockerfile" in _reachable(hub, "alice", "again", token)
    assert queue(hub) == []


def test_a_launch_queued_when_the_hub_restarts_fails_after_the_queue_timeout(
        make_hub):
    """The restarted hub applies its queue timeout to the launch it follows: with no
    runner at all the job fails with the queue timeout's reason, off the queue, and
    the server is gone, not stuck pending. (The operator lowers the timeout with the
    restart; the first hub's 120 s keep it from ending the launch before.)"""
    hub = make_hub(extra_config=NO_SPAWN_WAIT)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "lonely", token).status_code in (201, 202)
    job_id = wait_until(lambda: hub.job_of("alice", "lonely"), 60, "the queued job")["id"]

    hub.config["runners"]["queue_timeout"] = 5
    hub.restart()
    job = wait_until(lambda: (j := hub.job_of("alice", "lonely"))["state"] != "queued" and j,
                     120, "the queued job ended")
    assert (job["id"], job["state"]) == (job_id, "failed")
    assert job["error"] == ("No runner took the job within 5 s — no runner is alive: ask "
                            "the hub's operator to start booklab-runner")
    assert queue(hub) == []
    wait_until(lambda: hub.api("GET", "/users/alice").json()["servers"].get("lonely") is None,
               120, "the server gone")
