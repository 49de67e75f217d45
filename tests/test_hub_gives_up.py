"""The hub gives up with a reason instead of waiting forever (real hub, runner, Docker):
a launch no runner can take because every runner is busy, and a stop a runner does not
confirm. Each bound is the configured value (``runners.queue_timeout``, the spawner's
``stop_timeout``); the tests wait for the outcome, not for a time."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from docker.errors import NotFound

from booklab_spawner.registry import HEARTBEAT_INTERVAL, HEARTBEAT_TTL
from tests.conftest_hub import (
    log_states,
    queue,
    spawn_error,
    start_server,
    wait_gone,
    wait_log_state,
    wait_ready,
    wait_until,
)
from tests.conftest_runner import processes_under
from tests.conftest_stack import DEMO_DOCKERFILE, slow_build_step

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_a_launch_while_every_runner_is_busy_says_so_and_leaves_the_queue_empty(
        make_hub, hb_runner):
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
    assert queue(hub) == []
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


def test_the_hubs_build_timeout_is_the_one_runners_apply_and_the_user_reads_it(
        make_hub, hb_runner, hb_gitlab):
    """``runners.build_timeout`` in the operator's config.yml reaches the runner (through
    the signed conf): a build longer than it fails the launch with the runner's message,
    which names the timeout and the setting to raise."""
    hub = make_hub({"runners": {"build_timeout": 10}})
    hb_runner(hub)
    hb_gitlab.commit("demo/hello", "main", {
        "Dockerfile": DEMO_DOCKERFILE + slow_build_step("hub-timeout-step", 600)})
    hub.login("alice", "alice-pw")
    r = start_server(hub, "alice", "slow", hub.user_token("alice"))
    assert spawn_error(hub, "alice", "slow", r, timeout=600) == (
        "The build took longer than the build timeout (10 s) and was stopped: ask the "
        "hub's operator to raise runners.build_timeout, or make the environment smaller")
    assert hub.job_of("alice", "slow")["state"] == "failed"


def test_a_runner_that_stops_reporting_mid_build_fails_after_build_timeout_and_grace(
        make_hub, hb_runner, hb_gitlab):
    """A runner frozen (SIGSTOP) as its build begins cannot enforce the build timeout nor
    report: the hub itself fails the launch once ``runners.build_timeout`` plus
    ``runners.build_grace`` have passed since the job was claimed, saying the build ran
    out of time, and tells the runner to stop. That is before the frozen runner's
    heartbeat expires (when the job would instead go back to the queue): the grace is
    what ends it. Thawed, the runner ends the build and the job stays failed."""
    build_timeout, grace = 8, 4
    # the heartbeat, refreshed every HEARTBEAT_INTERVAL, lives HEARTBEAT_TTL: after the
    # freeze it lasts at least their difference; the hub's limit (plus its 1 s read
    # block) must run out first, or this would test the reaper instead
    assert build_timeout + grace + 1 < HEARTBEAT_TTL - HEARTBEAT_INTERVAL
    hub = make_hub({"runners": {"build_timeout": build_timeout, "build_grace": grace}})
    runner = hb_runner(hub)
    hb_gitlab.commit("demo/hello", "main", {
        "Dockerfile": DEMO_DOCKERFILE + slow_build_step("frozen-build-step", 600)})
    hub.login("alice", "alice-pw")
    token = hub.user_token("alice")
    with ThreadPoolExecutor(1) as pool:  # the POST waits up to slow_spawn_timeout
        request = pool.submit(start_server, hub, "alice", "frozen", token)
        job_id = wait_until(lambda: hub.job_of("alice", "frozen"), 60, "the job")["id"]
        wait_log_state(hub, job_id, "building")
        os.kill(runner.proc.pid, signal.SIGSTOP)
    try:
        message = spawn_error(hub, "alice", "frozen", request.result(), timeout=300)
        job = hub.job_of("alice", "frozen")
        beat = float(hub.redis().hget(hub.keys.runner(runner.runner_id), "beat"))
    finally:
        os.kill(runner.proc.pid, signal.SIGCONT)
    assert message == (
        f"Fetching and building the image ran out of time: runner {runner.runner_id} did "
        f"not report the end of the build within the build timeout ({build_timeout} s) "
        f"and {grace} s of grace: ask the hub's operator to check the runner or raise "
        "runners.build_timeout, or make the environment smaller")
    assert (job["state"], job["error"]) == ("failed", message)
    states = log_states(hub, job_id)
    claimed = next(e["ts"] for e in states if e["state"] == "claimed")
    failed = next(e["ts"] for e in states if e["state"] == "failed")
    assert failed - claimed >= build_timeout + grace, states
    assert failed < beat + HEARTBEAT_TTL, (failed, beat)  # the heartbeat still lived
    assert queue(hub) == []
    wait_gone(hub, "alice", "frozen")
    # the thawed runner reads the hub's stop: its build ends, the hub's reason stays
    wait_until(lambda: not processes_under(runner.work_dir), 120, "the build ended")
    assert hub.job_of("alice", "frozen")["error"] == message
