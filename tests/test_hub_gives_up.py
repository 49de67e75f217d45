"""The hub gives up with a reason instead of waiting forever (real hub, runner, Docker):
a launch no runner can take because every runner is busy, and a stop a runner does not
confirm. Each bound is the configured value (``runners.queue_timeout``, the spawner's
``stop_timeout``); the tests wait for the outcome, not for a time."""

from __future__ import annotations

import os
import signal

import pytest
from docker.errors import NotFound

from tests.conftest_hub import (
    queue,
    spawn_error,
    start_server,
    wait_gone,
    wait_ready,
    wait_until,
)
from tests.conftest_stack import DEMO_DOCKERFILE, slow_build_step

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_a_launch_while_every_runner_is_busy_says_so_and_leaves_the_queue_empty(
        make_hub, hb_runner, redis_server):
    """One runner, its one slot held by alice's first server: her second launch fails
    after the queue timeout saying all runners are busy (not that none is alive), its
    job is failed with that message and nothing stays queued. (The no-runner message is
    tests/test_hub_launch.py's test_queue_timeout_says_no_runner_is_alive.)"""
    hub = make_hub({"runners": {"queue_timeout": 5}})
    hb_runner(hub)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "first", token).status_code in (201, 202)
    wait_ready(hub, "alice", "first")

    r = start_server(hub, "alice", "second", token)
    message = spawn_error(hub, "alice", "second", r)
    assert message == ("No runner took the job within 5 s — all 1 runners are busy: "
                       "try again later")
    job = hub.job_of("alice", "second")
    assert (job["state"], job["error"]) == ("failed", message)
    assert queue(redis_server, hub) == []
    assert hub.job_of("alice", "first")["state"] == "running"


def test_a_stop_the_runner_does_not_confirm_fails_after_the_stop_timeout(
        make_hub, hb_runner, docker_client):
    """A runner that is frozen (SIGSTOP: its heartbeat has not expired yet) never
    confirms the stop: after the spawner's stop_timeout the server is gone for the user
    and the job is failed naming the runner and the timeout. The runner, thawed, still
    removes the container on the stop command it finds."""
    hub = make_hub(extra_config="c.BooklabSpawner.stop_timeout = 5\n")
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "frozen", token).status_code in (201, 202)
    wait_ready(hub, "alice", "frozen")
    container_id = hub.job_of("alice", "frozen")["container"]

    os.kill(runner.proc.pid, signal.SIGSTOP)
    try:
        r = hub.api("DELETE", "/users/alice/servers/frozen", token=token)
        assert r.status_code in (202, 204), r.text
        wait_gone(hub, "alice", "frozen")
        job = hub.job_of("alice", "frozen")
        assert (job["state"], job["error"]) == (
            "failed", f"Runner {runner.runner_id} did not confirm the stop within 5 s")
    finally:
        os.kill(runner.proc.pid, signal.SIGCONT)
    try:
        docker_client.api.wait(container_id, condition="removed", timeout=120)
    except NotFound:
        pass  # removed already
    with pytest.raises(NotFound):
        docker_client.containers.get(container_id)


def test_a_launch_queued_when_the_hub_restarts_ends_with_a_reason_and_can_be_retried(
        make_hub, hb_runner, redis_server):
    """JupyterHub cannot resume a spawn across a restart, so a launch still queued when
    the hub restarts must end, not wait on: the restarted hub fails its job saying why
    (off the queue, so no runner later starts a notebook no server owns), the server is
    not running, and launching it again works."""
    hub = make_hub()
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    assert start_server(hub, "alice", "again", token).status_code in (201, 202)
    first = wait_until(lambda: hub.job_of("alice", "again"), 60, "the queued job")["id"]

    hub.restart()
    job = wait_until(lambda: (j := hub.job_of("alice", "again"))["state"] != "queued" and j,
                     60, "the queued job ended")
    assert (job["id"], job["state"]) == (first, "failed")
    assert job["error"] == ("The hub restarted during this launch (the job was queued): "
                            "start the server again")
    assert queue(redis_server, hub) == []
    wait_gone(hub, "alice", "again")

    hb_runner(hub)
    assert start_server(hub, "alice", "again", token).status_code in (201, 202)
    wait_ready(hub, "alice", "again")
    assert hub.job_of("alice", "again")["id"] != first


def test_the_hubs_build_timeout_is_the_one_runners_apply_and_the_user_reads_it(
        make_hub, hb_runner, hb_gitlab):
    """``runners.build_timeout`` in the operator's config.yml reaches the runner (through
    the signed conf): a build longer than it fails the launch with the runner's message,
    which names the timeout and the setting to raise."""
    hub = make_hub({"runners": {"build_timeout": 20}})
    hb_runner(hub)
    hb_gitlab.commit("demo/hello", "main", {
        "Dockerfile": DEMO_DOCKERFILE + slow_build_step("hub-timeout-step", 600)})
    hub.login("alice", "alice-pw")
    r = start_server(hub, "alice", "slow", hub.user_token("alice"))
    assert spawn_error(hub, "alice", "slow", r, timeout=600) == (
        "The build took longer than the build timeout (20 s) and was stopped: ask the "
        "hub's operator to raise runners.build_timeout, or make the environment smaller")
    assert hub.job_of("alice", "slow")["state"] == "failed"
