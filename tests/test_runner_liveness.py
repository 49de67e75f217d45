"""Registration, heartbeat, graceful shutdown and slots of a real runner process."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from booklab_spawner.runner.app import CLAIM_BLOCK
from tests.conftest_runner import RT_DOCKERFILE
from tests.conftest_stack import slow_build_step
from tests.test_runner_recovery import wait_log

pytestmark = [pytest.mark.docker, pytest.mark.slow]


async def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached after {timeout} s"
        await asyncio.sleep(0.2)


async def test_runner_registers_beats_and_deregisters_on_sigterm(
        rt_runners, redis, keys, launcher):
    await launcher.publish()
    runner = rt_runners.start("live", "--slots=2")
    record = await wait_for(lambda: redis.hgetall(keys.runner("rt-live")), what="record")
    assert record["host"] == "127.0.0.1" and record["slots"] == "2"
    assert record["used"] == "0" and json.loads(record["jobs"]) == []
    assert isinstance(json.loads(record["images"]), list) and record["version"]
    assert "rt-live" in await redis.smembers(keys.runners)
    ttl = await redis.ttl(keys.heartbeat("rt-live"))
    assert 0 < ttl <= 30

    first = await redis.get(keys.heartbeat("rt-live"))
    refreshed = await wait_for(
        lambda: _changed(redis, keys.heartbeat("rt-live"), first), timeout=40,
        what="a refreshed heartbeat")
    assert float(refreshed) > float(first)

    assert runner.stop() == 0
    assert "rt-live" not in await redis.smembers(keys.runners)
    assert not await redis.exists(keys.heartbeat("rt-live"), keys.runner("rt-live"))


async def _changed(redis, key, old):
    value = await redis.get(key)
    return value if value and value != old else None


async def test_sigterm_mid_build_hands_the_job_back(
        rt_runners, redis, keys, launcher, demo_project):
    sha = demo_project.commit("demo/hello", "main", {
        "Dockerfile": RT_DOCKERFILE + slow_build_step("handback-step", 30)})
    runner = rt_runners.start("leaving")
    job_id = await launcher.launch("demo/hello", sha)
    await wait_log(launcher, job_id, "handback-step")
    assert runner.stop() == 0
    job = await launcher.store.get(job_id)
    assert job["state"] == "queued" and job["runner"] == ""
    assert await redis.lrange(keys.queue, 0, -1) == [job_id]
    assert "Runner rt-leaving shut down; requeued" in await launcher.log_text(job_id)


async def test_runner_without_a_free_slot_claims_nothing(
        rt_runners, redis, keys, launcher, demo_project):
    rt_runners.start("single")  # one slot by default
    first = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}))
    await launcher.wait_state(first, "running")
    second = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}))
    # a runner without a free slot re-checks every CLAIM_BLOCK s: give it four chances
    # to claim what it must not (there is no event for "nothing happened")
    await asyncio.sleep(4 * CLAIM_BLOCK)
    assert (await launcher.store.get(second))["state"] == "queued"
    assert await redis.lrange(keys.queue, 0, -1) == [second]
    assert await launcher.store.queue_position(second) == 1

    await launcher.stop(first)  # the slot frees: the waiting job is taken at once
    job = await launcher.wait_state(second, "running")
    assert job["runner"] == "rt-single"
    await launcher.stop(second)
