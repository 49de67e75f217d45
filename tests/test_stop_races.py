"""Stopping a launch that races a runner's claim (issue 14, item 9).

A runner claims in two steps: BLMOVE moves the job id from the queue into its
``claimed:<runner>`` list, then ``queued -> claimed`` names the runner in the
record. A stop that lands between the two used to be refused (the job was in no
queue to cancel, and ``queued`` is not a state a runner is told to stop), and
then crashed on the record's missing ``runner`` field, so the runner went on to
start a container nobody stopped. Here the job is moved into a runner's list
first, exactly as BLMOVE leaves it, and then stopped through the real spawner.
"""

from __future__ import annotations

import asyncio

import pytest

from booklab_spawner.exceptions import InvalidTransition
from booklab_spawner.spawner import BooklabSpawner


async def queued_job(store, job_id: str) -> str:
    await store.create(job_id, {"user": "alice", "project": "demo/hello"}, "blob")
    return job_id


def spawner_for(redis_server, keys, job_id: str) -> BooklabSpawner:
    return BooklabSpawner(redis_url=redis_server.url, key_prefix=keys.prefix,
                          runner_token="t" * 40, job_id=job_id, stop_timeout=5)


async def test_stop_of_a_job_already_in_a_runners_claimed_list(store, redis, keys,
                                                                redis_server):
    job_id = await queued_job(store, "j-race")
    assert await store.claim("r1", 1) == job_id  # the runner's BLMOVE, not its transition yet
    assert await redis.lrange(keys.claimed("r1"), 0, -1) == [job_id]
    assert (await store.get(job_id))["state"] == "queued"

    await spawner_for(redis_server, keys, job_id).stop()

    job = await store.get(job_id)
    assert job["state"] == "stopped"
    assert "runner" not in job  # nobody was (or had to be) asked to stop it
    assert await redis.llen(keys.commands("r1")) == 0
    # the runner's claim, as runner/app.py's _take makes it, is now refused
    with pytest.raises(InvalidTransition):
        await store.transition(job_id, "claimed", "Claimed by runner r1",
                               allowed_from=["queued"], runner="r1")
    assert (await store.get(job_id))["state"] == "stopped"
    assert await redis.ttl(keys.job(job_id)) > 0  # a finished record expires
    assert await redis.exists(keys.token(job_id)) == 0  # and its secrets are gone


async def test_stop_of_a_job_handed_back_to_the_queue(store, redis, keys, redis_server):
    """A job a runner handed back (``runner`` emptied, id in the queue) is cancelled."""
    job_id = await queued_job(store, "j-back")
    assert await store.claim("r1", 1) == job_id
    await store.transition(job_id, "claimed", runner="r1")
    await store.requeue("r1", job_id, "runner going away")
    assert (await store.get(job_id))["runner"] == ""

    await spawner_for(redis_server, keys, job_id).stop()

    assert (await store.get(job_id))["state"] == "stopped"
    assert await redis.llen(keys.queue) == 0
    assert await redis.llen(keys.commands("r1")) == 0


async def test_stop_after_the_claim_asks_that_runner(store, redis, keys, redis_server):
    """Once the runner's ``queued -> claimed`` won, the stop goes to that runner."""
    job_id = await queued_job(store, "j-won")
    assert await store.claim("r1", 1) == job_id
    await store.transition(job_id, "claimed", runner="r1")
    # no runner answers here: the stop times out and fails the job (stop_timeout 5 s)
    await spawner_for(redis_server, keys, job_id).stop()
    assert await redis.lrange(keys.commands("r1"), 0, -1) == [
        '{"op": "stop", "job": "j-won"}']
    assert (await store.get(job_id))["state"] == "failed"  # r1 has no heartbeat


@pytest.mark.docker
@pytest.mark.slow
async def test_a_real_runner_skips_a_job_stopped_between_its_blmove_and_its_claim(
        launcher, rt_runners, rt_docker, demo_project, redis, keys, redis_server):
    """The runner's side, with a real ``booklab-runner``: the job is stopped while its
    id is in that runner's claimed list; the runner's ``_take`` then finds it no
    longer ``queued``, drops it and never starts a container for it."""
    runner_id = "rt-race"
    job_id = await launcher.launch("demo/hello", demo_project.commit(
        "demo/hello", "main", {"race.ipynb": "{}"}))
    # where BLMOVE leaves a job: in the runner's claimed list, still queued
    assert await redis.lmove(keys.queue, keys.claimed(runner_id), "RIGHT", "LEFT") == job_id
    await spawner_for(redis_server, keys, job_id).stop()
    assert (await store_state(launcher, job_id)) == "stopped"
    # the runner now reaches its queued -> claimed for that id: hand it the id through
    # its own BLMOVE, so that the real _take runs on exactly this Redis state
    await redis.lmove(keys.claimed(runner_id), keys.queue, "LEFT", "RIGHT")
    runner = rt_runners.start("race")
    assert runner.runner_id == runner_id
    deadline = asyncio.get_running_loop().time() + 120
    while f"skipping job {job_id}" not in runner.output():
        assert asyncio.get_running_loop().time() < deadline, runner.output()[-3000:]
        await asyncio.sleep(0.2)
    assert (await store_state(launcher, job_id)) == "stopped"
    assert await redis.llen(keys.claimed(runner_id)) == 0
    assert await redis.llen(keys.queue) == 0
    assert rt_docker.containers.list(all=True,
                                     filters={"label": f"org.booklab.job={job_id}"}) == []
    states = [e.state for e in await launcher.store.read_log(job_id) if e.kind == "state"]
    assert states == ["queued", "stopped"]


async def store_state(launcher, job_id: str) -> str:
    return (await launcher.store.get(job_id))["state"]
