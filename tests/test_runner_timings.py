"""Runner timings are configuration, and the configured value is the one applied.

The container start timeout is the hub's (``runners.container_start_timeout``,
published in the signed ``conf``); reap interval, orphan grace and shutdown
timeout are the runner's own options. Until these tests, the runner gave up on
a starting notebook after a hard-coded 60 s whatever the hub said.
"""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

from booklab_spawner import registry
from booklab_spawner.runner.app import Runner, RunnerApp
from booklab_spawner.runner.heartbeat import heartbeat_loop
from booklab_spawner.runner.recovery import RecoveryContext, reap_dead, reap_loop

# listens on the --port the runner appends only after DELAY seconds
LISTEN_LATE = (
    "import socket, sys, time\n"
    "port = int([a for a in sys.argv if a.startswith('--port=')][0][7:])\n"
    "time.sleep({delay})\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', port)); s.listen()\n"
    "time.sleep(600)\n"
)
# ignores SIGTERM, so that stopping it takes Docker's whole stop grace (10 s)
DEAF = (
    "import signal, socket, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "port = int([a for a in sys.argv if a.startswith('--port=')][0][7:])\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', port)); s.listen()\n"
    "time.sleep(600)\n"
)


def app(*argv: str) -> RunnerApp:
    a = RunnerApp()
    a.parse_command_line(["--runner-id=timings", *argv])
    return a


def test_runner_timing_options_have_documented_defaults():
    a = app()
    assert (a.reap_interval, a.orphan_grace, a.shutdown_timeout) == (5.0, 300.0, 60.0)
    assert (a.heartbeat_ttl, a.heartbeat_interval) == (30, 10.0)
    for option in ("--reap-interval=0", "--shutdown-timeout=0", "--orphan-grace=-1",
                   "--heartbeat-ttl=0", "--heartbeat-interval=0"):
        with pytest.raises(Exception, match="must"):
            app(option)


@pytest.mark.docker  # the Runner opens its Docker client
def test_runner_timing_options_reach_the_runner():
    configured = app("--reap-interval=7", "--orphan-grace=42", "--shutdown-timeout=9",
                     "--heartbeat-ttl=6", "--heartbeat-interval=2")
    configured.runner_token = "t" * 40
    runner = Runner(configured)
    assert (runner.reap_interval, runner.orphan_grace, runner.shutdown_timeout) == (7, 42, 9)
    assert (runner.heartbeat_ttl, runner.heartbeat_interval) == (6, 2)
    # and reach the part that applies them
    assert (runner.recovery.reap_interval, runner.recovery.orphan_grace) == (7, 42)


def test_a_heartbeat_interval_not_below_the_ttl_is_refused():
    configured = app("--heartbeat-ttl=5", "--heartbeat-interval=5")
    configured.runner_token = "t" * 40
    with pytest.raises(SystemExit):
        configured.start()


async def test_the_heartbeat_lives_the_configured_ttl(redis, keys):
    """What the runner's heartbeat loop writes expires after its heartbeat_ttl."""
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat_loop(redis, keys, "beating", dict, stop, 0.2, 3))
    try:
        await asyncio.sleep(0.5)
        assert 0 < await redis.ttl(keys.heartbeat("beating")) <= 3
    finally:
        stop.set()
        await task
    assert await registry.is_alive(redis, keys, "beating")
    await asyncio.sleep(3.2)  # no beat since: the key is gone, the runner dead
    assert not await registry.is_alive(redis, keys, "beating")


# -- reaping, against a real Redis ------------------------------------------------------
def reaper(redis, keys, store, **timings) -> RecoveryContext:
    """What recovery.py gets of a live runner: the same context the runner builds."""
    return RecoveryContext(
        runner_id="alive", store=store,
        dead_runners=functools.partial(registry.dead_runners, redis, keys),
        forget=functools.partial(registry.forget, redis, keys),
        stopping=asyncio.Event(), **timings)


async def dead_runner_with_job(redis, keys, store, name: str, state: str,
                               gone_for: float) -> str:
    """Runner ``name``, last heartbeat ``gone_for`` s ago, holding one job in ``state``."""
    await registry.register(redis, keys, name, {"host": "127.0.0.1"})
    job_id = f"job-{name}"
    await store.create(job_id, {"user": "alice", "project": "demo/hello"}, "blob")
    assert await store.claim(name, 1) == job_id
    for s in ("claimed", "fetching", "building", "starting", "running"):
        await store.transition(job_id, s, f"now {s}", runner=name)
        if s == state:
            break
    await redis.delete(keys.heartbeat(name))
    await redis.hset(keys.runner(name), "beat", str(time.time() - gone_for))
    return job_id


async def test_configured_orphan_grace_decides_when_a_dead_runners_notebook_is_failed(
        redis, keys, store):
    job_id = await dead_runner_with_job(redis, keys, store, "dead", "running", gone_for=60)
    # 60 s gone, grace 300 s: the runner may still come back for its notebook
    await reap_dead(reaper(redis, keys, store, orphan_grace=300))
    assert (await store.get(job_id))["state"] == "running"
    # grace 30 s: the same notebook is now lost, and the message says after how long
    await reap_dead(reaper(redis, keys, store, orphan_grace=30))
    job = await store.get(job_id)
    assert job["state"] == "failed"
    assert job["error"] == "Runner dead has been gone for over 30 s; the notebook is lost"


@pytest.mark.parametrize("interval,requeued", [(0.2, True), (30, False)])
async def test_configured_reap_interval_is_the_scan_period(redis, keys, store, interval,
                                                           requeued):
    runner = reaper(redis, keys, store, reap_interval=interval, orphan_grace=300)
    loop = asyncio.create_task(reap_loop(runner))
    try:
        await asyncio.sleep(0.5)  # the first scan is over: only the next one can see it
        job_id = await dead_runner_with_job(redis, keys, store, "late", "claimed", gone_for=40)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and (await store.get(job_id))["state"] != "queued":
            await asyncio.sleep(0.05)
        assert ((await store.get(job_id))["state"] == "queued") is requeued
    finally:
        runner.stopping.set()
        await asyncio.wait_for(loop, 5)


# -- real runners: the start timeout comes from the hub's conf ---------------------------
@pytest.mark.docker
@pytest.mark.slow
async def test_configured_container_start_timeout_is_the_one_the_runner_applies(
        launcher, rt_runners, demo_project):
    """A notebook that listens after 8 s fails with a 3 s container start timeout (the
    error names it) and starts with a 30 s one: the runner waits as long as the hub
    says, not a fixed 60 s (under which the first launch would have started)."""
    rt_runners.start("timings")
    sha = demo_project.commit("demo/hello", "main", {})
    late = ["python3", "-c", LISTEN_LATE.format(delay=8)]

    launcher.conf.container_start_timeout = 3
    job_id = await launcher.launch("demo/hello", sha, cmd=late)
    job = await launcher.wait_state(job_id, ("running", "failed"))
    assert job["state"] == "failed", await launcher.log_text(job_id)
    assert "within the container start timeout (3 s)" in job["error"]
    assert "runners.container_start_timeout" in job["error"]

    launcher.conf.container_start_timeout = 30
    job_id = await launcher.launch("demo/hello", sha, cmd=late)
    job = await launcher.wait_state(job_id, ("running", "failed"))
    assert job["state"] == "running", await launcher.log_text(job_id)
    assert (await launcher.stop(job_id))["state"] == "stopped"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("timeout,deregistered", [(2, False), (60, True)])
async def test_configured_shutdown_timeout_bounds_the_runners_exit(
        launcher, rt_runners, demo_project, redis, keys, timeout, deregistered):
    """On SIGTERM the runner stops its notebooks: one that ignores SIGTERM takes Docker's
    10 s stop grace. With --shutdown-timeout=2 the runner gives up first and leaves its
    record for the reapers; with 60 it waits for the notebook, and deregisters."""
    proc = rt_runners.start(f"shut{timeout}", f"--shutdown-timeout={timeout}")
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}),
                                   cmd=["python3", "-c", DEAF])
    await launcher.wait_state(job_id, "running")
    proc.stop()
    assert (await redis.sismember(keys.runners, proc.runner_id) == 0) is deregistered
    gave_up = ("could not hand back jobs or deregister (not done within the shutdown "
               f"timeout ({timeout} s))") in proc.output()
    assert gave_up is not deregistered, proc.output()[-3000:]
