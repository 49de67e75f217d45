"""Matching and fair share of the claim, against a real Redis.

Runners claim only from the queues of the profiles their labels satisfy, with one
atomic script (no double claim, none lost), wake up on a token instead of polling,
and each profile's queue is served round-robin across users.
"""

import asyncio
import random
from collections import Counter

from booklab_spawner.jobs import JobStore


async def make_job(store, job_id, user="alice", profile=""):
    fields = {"user": user, "project": "demo/hello"}
    if profile:
        fields["profile"] = profile
    await store.create(job_id, fields, "blob")
    return job_id


async def test_a_profile_job_goes_to_its_own_queue(store, redis, keys):
    await make_job(store, "g1", profile="gpu")
    await make_job(store, "d1")
    assert await redis.lrange(keys.queue_of("gpu"), 0, -1) == ["g1"]
    assert await redis.lrange(keys.queue, 0, -1) == ["d1"]
    assert await store.queue_position("g1") == 1 and await store.queue_position("d1") == 1
    # a runner that serves only the default profile never sees the gpu job
    assert await store.claim("small", 0.1) == "d1"
    assert await store.claim("small", 0.1) is None
    assert await store.claim("big", 0.1, profiles=["gpu", "default"]) == "g1"
    assert await redis.lrange(keys.claimed("big"), 0, -1) == ["g1"]
    # nothing left behind: queues, rounds and wake-up tokens are empty again
    for profile in ("gpu", "default"):
        assert await redis.llen(keys.queue_of(profile)) == 0
        assert await redis.llen(keys.wake(profile)) == 0
        assert await redis.hkeys(keys.fair(profile)) == ["round"]


async def test_a_runner_prefers_its_first_profile(store):
    await make_job(store, "d1")
    await make_job(store, "g1", profile="gpu")
    assert await store.claim("big", 0.1, profiles=["gpu", "default"]) == "g1"
    assert await store.claim("big", 0.1, profiles=["gpu", "default"]) == "d1"


async def test_race_many_runners_many_profiles_no_double_claim_none_lost(store, redis_server):
    """40 runners of three kinds claim 600 jobs of three profiles, queued while they
    claim: every job is claimed exactly once, by a runner that serves its profile."""
    import redis.asyncio as aioredis

    serves = {"gpu": ["gpu", "default"], "big": ["big", "default"], "small": ["default"]}
    runners = {f"{kind}-{i}": profiles for i in range(40)
               for kind, profiles in [list(serves.items())[i % 3]]}
    jobs = {f"job-{i:04d}": random.choice(["gpu", "big", "default"]) for i in range(600)}
    claimed: dict[str, list[str]] = {r: [] for r in runners}
    done = asyncio.Event()
    clients = []

    async def runner(rid, profiles):
        client = aioredis.from_url(redis_server.url, decode_responses=True)
        clients.append(client)
        own = JobStore(client, store.keys)
        while not done.is_set():
            job = await own.claim(rid, 0.3, profiles=profiles)
            if job is not None:
                claimed[rid].append(job)
                if sum(map(len, claimed.values())) == len(jobs):
                    done.set()

    tasks = [asyncio.create_task(runner(r, p)) for r, p in runners.items()]
    users = [f"user{i}" for i in range(7)]
    for job_id, profile in jobs.items():
        await make_job(store, job_id, user=random.choice(users),
                       profile="" if profile == "default" else profile)
    await asyncio.wait_for(done.wait(), 60)
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()
    counts = Counter(j for js in claimed.values() for j in js)
    assert set(counts) == set(jobs) and set(counts.values()) == {1}
    for rid, js in claimed.items():
        assert all(jobs[j] in runners[rid] for j in js), rid
        assert sorted(await store.claimed_by(rid)) == sorted(js)
    for profile in ("gpu", "big", "default"):
        assert await store.queued(profile) == []


async def test_a_token_taken_for_another_profile_still_wakes_the_next_runner(
        store, redis, keys):
    """Runner A (default, then gpu) blocks first, runner B (gpu only) second. A gpu
    job and a default job arrive together: A is woken by the gpu token but claims the
    default job it prefers; the claim script leaves a gpu token, so B wakes at once
    rather than at the end of its block."""
    a = asyncio.create_task(store.claim("a", 60, profiles=["default", "gpu"]))
    await asyncio.sleep(0.2)
    b = asyncio.create_task(store.claim("b", 60, profiles=["gpu"]))
    await asyncio.sleep(0.2)
    async with redis.pipeline(transaction=True) as pipe:  # as JobStore.create queues
        pipe.rpush(keys.queue_of("gpu"), "g1").rpush(keys.wake("gpu"), "1")
        pipe.rpush(keys.queue, "d1").rpush(keys.wake("default"), "1")
        await pipe.execute()
    assert await asyncio.wait_for(a, 10) == "d1"
    assert await asyncio.wait_for(b, 10) == "g1"  # not after its 60 s block


async def test_fair_share_one_users_burst_does_not_hold_back_another(store):
    """alice opens 20 launches, then bob one: bob's waits behind alice's first only."""
    for i in range(20):
        await make_job(store, f"a{i:02d}", user="alice")
    await make_job(store, "bob1", user="bob")
    assert await store.queue_position("bob1") == 2
    assert await store.queue_position("a01") == 3  # alice's second: behind everyone's first
    # one slot: each turnover claims one job; bob's is the second to be claimed
    assert await store.claim("r1", 0.1) == "a00"
    assert await store.claim("r1", 0.1) == "bob1"
    assert await store.claim("r1", 0.1) == "a01"


async def test_fair_share_is_round_robin_and_positions_follow(store):
    for i in range(3):
        await make_job(store, f"a{i}", user="alice")
    for i in range(2):
        await make_job(store, f"c{i}", user="carol")
    await make_job(store, "b0", user="bob")
    expected = ["a0", "c0", "b0", "a1", "c1", "a2"]
    assert await store.queued() == expected
    assert [await store.queue_position(j) for j in expected] == [1, 2, 3, 4, 5, 6]
    await store.announce_positions()
    lines = [e.message for e in await store.read_log("b0") if e.kind == "log"]
    assert lines == ["Position in the queue: 3"]
    # alice's first is claimed; a new user arrives in the current round, behind c0 and b0
    assert await store.claim("r1", 0.1) == "a0"
    await make_job(store, "d0", user="dave")
    assert await store.queued() == ["c0", "b0", "d0", "a1", "c1", "a2"]
    # alice again: after her queued ones
    await make_job(store, "a3", user="alice")
    assert (await store.queued())[-1] == "a3"


async def test_cancel_and_requeue_keep_the_fair_order(store, redis, keys):
    for i in range(3):
        await make_job(store, f"a{i}", user="alice")
    await make_job(store, "b0", user="bob")
    assert await store.cancel_queued("a1")
    assert await store.queued() == ["a0", "b0", "a2"]
    assert await redis.hget(keys.fair("default"), "j:a1") is None  # round forgotten
    assert await store.claim("r1", 0.1) == "a0"
    await store.transition("a0", "claimed", runner="r1")
    await store.requeue("r1", "a0", "runner going away")
    assert await store.queued() == ["a0", "b0", "a2"]  # handed back: to the front
    assert await store.claim("r2", 0.1) == "a0"


async def test_the_admin_page_lists_every_profiles_queue_with_positions(store):
    from booklab_hub.handlers.admin import job_rows

    await make_job(store, "a0", user="alice")
    await make_job(store, "a1", user="alice")
    await make_job(store, "g0", user="bob", profile="gpu")
    await make_job(store, "b0", user="bob")
    rows = {r["id"]: r for r in await job_rows(store, [], ("default", "gpu"))}
    assert {j: rows[j]["position"] for j in rows} == {"a0": 1, "b0": 2, "a1": 3, "g0": 1}
    assert rows["g0"]["profile"] == "gpu"


async def test_fair_share_holds_under_a_concurrent_burst(store, redis_server):
    """alice's 20 launches and bob's one, queued at once from 21 connections while a
    runner claims: bob's job is claimed first or second."""
    import redis.asyncio as aioredis

    clients = [aioredis.from_url(redis_server.url, decode_responses=True) for _ in range(21)]
    stores = [JobStore(c, store.keys) for c in clients]
    order = list(range(21))
    random.shuffle(order)
    await asyncio.gather(*(make_job(stores[i], "bob1" if i == 20 else f"a{i:02d}",
                                    user="bob" if i == 20 else "alice") for i in order))
    claimed = [await store.claim("r1", 0.1) for _ in range(21)]
    assert set(claimed) == {"bob1", *(f"a{i:02d}" for i in range(20))}
    assert claimed.index("bob1") <= 1, claimed
    for c in clients:
        await c.aclose()
