"""The job store as the one door to jobs: the pruned index, the migration from
protocol 2's ``status`` hash, and the stop decision every caller shares."""

import json
import time

from booklab_hub.handlers.admin import MAX_JOBS, job_rows
from booklab_spawner.jobs import JOB_TTL, STATES, TERMINAL, State


async def make_job(store, job_id, **fields):
    await store.create(job_id, {"user": "alice", "project": "demo/hello", **fields}, "blob")
    return job_id


async def age(redis, keys, job_id, seconds):
    """Make a job's index entry ``seconds`` old; drop its record if it "expired"."""
    await redis.zadd(keys.jobs, {job_id: time.time() - seconds})


def test_states_are_one_enum_whose_values_redis_stores():
    assert [s.value for s in STATES] == ["queued", "claimed", "fetching", "building",
                                         "starting", "running", "stopping", "stopped", "failed"]
    assert f"{State.QUEUED}" == "queued" and State("failed") in TERMINAL


async def test_prune_drops_only_expired_entries(store, redis, keys):
    for job_id in ("expired", "long-running", "new"):
        await make_job(store, job_id)
    await age(redis, keys, "expired", JOB_TTL + 60)
    await redis.delete(keys.job("expired"))  # what the record's TTL does
    await age(redis, keys, "long-running", JOB_TTL + 60)  # a record without TTL: running
    assert await store.prune() == 1
    assert set(await redis.zrange(keys.jobs, 0, -1)) == {"long-running", "new"}
    assert await store.prune() == 0


async def test_the_index_stays_bounded_as_jobs_come_and_go(store, redis, keys):
    """Each create prunes a batch, so entries of expired jobs never pile up."""
    old = {f"old{i}": time.time() - JOB_TTL - 100 - i for i in range(120)}
    await redis.zadd(keys.jobs, old)  # index entries whose records expired long ago
    for i in range(3):
        await make_job(store, f"new{i}")
        assert await redis.zcard(keys.jobs) == i + 1  # the first create took all 120
    assert await store.prune(batch=10) == 0


async def test_prune_works_a_batch_at_a_time(store, redis, keys):
    await redis.zadd(keys.jobs, {f"old{i}": 1000.0 + i for i in range(25)})
    assert await store.prune(batch=10) == 10
    assert await redis.zcard(keys.jobs) == 15
    assert await store.prune(batch=100) == 15


async def test_protocol_2_status_hash_is_migrated_once(store, redis, keys):
    await make_job(store, "kept")
    await redis.hset(keys.job("kept"), "updated", "1234.5")
    await redis.zrem(keys.jobs, "kept")
    await redis.hset(keys.legacy_status, mapping={"kept": "running", "expired": "stopped"})
    assert await store.recent(10) == ["kept"]
    assert await redis.zscore(keys.jobs, "kept") == 1234.5
    assert not await redis.exists(keys.legacy_status)
    await redis.hset(keys.legacy_status, "late", "queued")  # an old hub still writing
    assert await store.migrate_legacy_status() == 0  # no record for "late": not indexed
    assert not await redis.exists(keys.legacy_status)


async def test_recent_is_newest_first_and_limited(store, redis, keys):
    for i in range(5):
        await make_job(store, f"j{i}")
        await redis.zadd(keys.jobs, {f"j{i}": 100.0 + i})
    await store.transition("j1", "claimed", runner="r1")  # a change moves it to the top
    assert await store.recent(3) == ["j1", "j4", "j3"]


async def test_admin_rows_keep_active_jobs_however_old(store, redis, keys):
    """A notebook running for weeks is on the admin page even after MAX_JOBS newer
    jobs; so is every queued job."""
    await make_job(store, "0-old-running")
    assert await store.claim("r1", 1) == "0-old-running"
    await store.transition("0-old-running", "claimed", runner="r1")
    await redis.zadd(keys.jobs, {"0-old-running": 1.0})
    await make_job(store, "0-queued")
    await redis.zadd(keys.jobs, {"0-queued": 2.0})
    for i in range(MAX_JOBS + 5):
        await make_job(store, f"1-{i:04d}")
        await store.cancel_queued(f"1-{i:04d}")
    rows = {row["id"]: row for row in await job_rows(store, ["r1"])}
    assert rows["0-old-running"]["state"] == "claimed"
    assert rows["0-queued"]["position"] == 1
    assert len(rows) == MAX_JOBS + 2
    assert "1-0000" not in rows and "1-0005" in rows  # the oldest finished ones drop off


async def test_note_writes_only_to_an_existing_job(store, redis, keys):
    await make_job(store, "a")
    assert await store.note("a", deploy_key_id="42", extra={"k": 1})
    job = await store.get("a")
    assert job["deploy_key_id"] == "42" and json.loads(job["extra"]) == {"k": 1}
    assert not await store.note("missing", deploy_key_id="42")
    assert not await redis.exists(keys.job("missing"))


async def test_fail_and_move_report_instead_of_raising(store):
    await make_job(store, "a")
    assert await store.move("a", "claimed", runner="r1") == "queued"
    assert await store.move("a", "running") is None  # claimed cannot jump to running
    assert await store.fail("a", "the build broke", exit_code=2)
    job = await store.get("a")
    assert (job["state"], job["error"], job["exit_code"]) == ("failed", "the build broke", "2")
    assert not await store.fail("a", "again")
    assert (await store.get("a"))["error"] == "the build broke"
    assert await store.move("missing", "claimed") is None


async def commands(redis, keys, runner):
    return [json.loads(c) for c in await redis.lrange(keys.commands(runner), 0, -1)]


async def test_request_stop_decides_for_every_state(store, redis, keys):
    await make_job(store, "queued")
    assert (await store.request_stop("queued", "Stop"))[0] == "cancelled"
    assert (await store.get("queued"))["state"] == "stopped"
    assert await redis.llen(keys.queue) == 0

    await make_job(store, "held")
    await store.transition("held", "claimed", runner="r1")
    outcome, job = await store.request_stop("held", "Stop")
    assert (outcome, job["state"]) == ("asked", "stopping")
    assert await commands(redis, keys, "r1") == [{"op": "stop", "job": "held"}]
    assert (await store.request_stop("held", "Stop"))[0] == "stopping"
    assert len(await commands(redis, keys, "r1")) == 2  # asked again, harmlessly

    await store.transition("held", "stopped")
    assert (await store.request_stop("held", "Stop"))[0] == "ended"
    assert (await store.request_stop("missing", "Stop"))[0] == "ended"

    await make_job(store, "orphan")
    await store.transition("orphan", "claimed")  # a record that names no runner
    outcome, job = await store.request_stop("orphan", "Stop")
    assert outcome == "stuck" and job["state"] == "stopping"
