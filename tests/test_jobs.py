"""The job protocol against a real Redis: state machine, atomic claim, log replay."""

import asyncio

import pytest

from booklab_spawner.exceptions import InvalidTransition, JobNotFound


async def make_job(store, job_id="j1", **fields):
    await store.create(job_id, {"user": "alice", "project": "demo/hello", **fields}, "blob")
    return job_id


async def test_create_writes_record_index_queue_log_and_secret(store, redis, keys):
    await make_job(store)
    job = await store.get("j1")
    assert job["state"] == "queued" and job["user"] == "alice"
    assert await redis.zscore(keys.jobs, "j1") == float(job["created"])
    assert await redis.lrange(keys.queue, 0, -1) == ["j1"]
    assert await redis.get(keys.token("j1")) == "blob"
    entries = await store.read_log("j1")
    assert [(e.kind, e.state) for e in entries] == [("state", "queued")]


async def test_full_lifecycle_in_order(store, redis, keys):
    await make_job(store)
    for state in ("claimed", "fetching", "building", "starting", "running", "stopping",
                  "stopped"):
        await store.transition("j1", state, f"now {state}")
    states = [e.state for e in await store.read_log("j1") if e.kind == "state"]
    assert states == ["queued", "claimed", "fetching", "building", "starting", "running",
                      "stopping", "stopped"]
    # the index orders jobs by their last change: the final one
    assert await redis.zscore(keys.jobs, "j1") == float((await store.get("j1"))["updated"])
    # finished jobs expire and their secrets are deleted at once
    assert await redis.ttl(keys.job("j1")) > 0
    assert await redis.exists(keys.token("j1")) == 0


@pytest.mark.parametrize("path,bad", [
    (["claimed"], "running"),
    (["claimed", "fetching", "building", "starting", "running"], "building"),
    (["failed"], "queued"),
    (["stopped"], "running"),
    (["claimed", "stopping"], "running"),
])
async def test_forbidden_transitions_raise_and_change_nothing(store, path, bad):
    await make_job(store)
    for state in path:
        await store.transition("j1", state)
    before = (await store.get("j1"))["state"]
    with pytest.raises(InvalidTransition):
        await store.transition("j1", bad)
    assert (await store.get("j1"))["state"] == before


async def test_allowed_from_narrows_the_sources(store):
    await make_job(store)
    await store.transition("j1", "claimed")
    with pytest.raises(InvalidTransition):
        await store.transition("j1", "failed", allowed_from=["queued"])


async def test_transition_of_missing_job(store):
    with pytest.raises(JobNotFound):
        await store.transition("nope", "claimed")


async def test_transition_sets_fields(store):
    await make_job(store)
    await store.transition("j1", "claimed", runner="r1")
    assert (await store.get("j1"))["runner"] == "r1"


async def test_claim_is_fifo_and_atomic(store, redis, keys):
    for i in range(30):
        await make_job(store, f"job{i:02d}")
    claimed: dict[str, list[str]] = {"r1": [], "r2": [], "r3": []}

    async def worker(rid):
        while True:
            job = await store.claim(rid, 0.2)
            if job is None:
                return
            claimed[rid].append(job)

    await asyncio.gather(*(worker(r) for r in claimed))
    everything = sorted(j for js in claimed.values() for j in js)
    assert everything == [f"job{i:02d}" for i in range(30)]  # each exactly once, none lost
    for rid, js in claimed.items():
        assert js == sorted(js), (rid, js)  # first in, first out: each runner in order
        assert sorted(await redis.lrange(keys.claimed(rid), 0, -1)) == sorted(js)
    assert await redis.llen(keys.queue) == 0


async def test_claim_blocks_until_a_job_arrives(store):
    block = 60  # the claim's own timeout: it returns None only when that runs out
    waiter = asyncio.create_task(store.claim("r1", block))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await make_job(store, "late")
    assert await waiter == "late"
    # woken by the push, long before its block ran out (how fast: benchmarks/)
    assert loop.time() - t0 < block / 4


async def test_queue_position_and_cancel(store):
    for j in ("a", "b", "c"):
        await make_job(store, j)
    assert await store.queue_position("a") == 1
    assert await store.queue_position("c") == 3
    assert await store.cancel_queued("b")
    assert (await store.get("b"))["state"] == "stopped"
    assert await store.queue_position("c") == 2
    assert not await store.cancel_queued("b")


async def test_cancel_queued_decides_by_state_not_by_list(store, redis, keys):
    """A job a runner's BLMOVE took, but not yet ``queued -> claimed``, is still
    cancellable; the runner's claim then fails and nothing is left queued."""
    await make_job(store, "a")
    assert await store.claim("r1", 1) == "a"
    assert await store.cancel_queued("a")
    assert (await store.get("a"))["state"] == "stopped"
    with pytest.raises(InvalidTransition):
        await store.transition("a", "claimed", allowed_from=["queued"], runner="r1")
    assert not await store.cancel_queued("a")
    assert not await store.cancel_queued("missing")
    await store.release("r1", "a")
    assert await redis.llen(keys.claimed("r1")) == 0 and await redis.llen(keys.queue) == 0


async def test_requeue_hands_back_to_the_front(store, redis, keys):
    await make_job(store, "a")
    await make_job(store, "b")
    assert await store.claim("r1", 1) == "a"
    await store.transition("a", "claimed", runner="r1")
    await store.requeue("r1", "a", "runner going away")
    assert (await store.get("a"))["state"] == "queued"
    assert await redis.llen(keys.claimed("r1")) == 0
    assert await store.claim("r2", 1) == "a"


async def test_log_replays_from_start_and_resumes_after_an_id(store):
    await make_job(store)
    ids = [await store.log("j1", f"line {i}", "building") for i in range(5)]
    all_entries = await store.read_log("j1")
    assert [e.message for e in all_entries][1:] == [f"line {i}" for i in range(5)]
    after = await store.read_log("j1", after=ids[2])
    assert [e.message for e in after] == ["line 3", "line 4"]


async def test_follow_log_streams_live_and_stops_at_terminal_state(store):
    await make_job(store)
    seen = []

    async def follow():
        async for entry in store.follow_log("j1", block_ms=200):
            if entry is not None:
                seen.append(entry.message)

    task = asyncio.create_task(follow())
    await store.log("j1", "hello")
    await store.transition("j1", "failed", "it broke", error="it broke")
    await asyncio.wait_for(task, 5)
    assert seen[-2:] == ["hello", "it broke"]
