"""Queue -> claim latency: the profile-aware claim against the plain BLMOVE it replaced.

Both run in this process against one real redis-server. Each sample: idle runners
block; the hub's side queues one job; the time until a runner's claim returns it.
The baseline is main's path (main's ``JobStore.create`` writes, ``LPUSH queue``, and
``BLMOVE queue claimed``); the new
path is ``JobStore.create``'s enqueue script + the claim script woken by BLPOP on
the profiles' wake-up tokens. Printed: p50/p99 of each and the ratio new/baseline.

    .venv/bin/python -m benchmarks.claim [--samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from booklab_spawner.jobs import JOB_TTL, LOG_MAXLEN, JobStore
from booklab_spawner.keys import Keys
from tests.services import RedisServer


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))] * 1000


async def _main_create(redis, keys: Keys, job_id: str) -> None:
    """main's JobStore.create: the same writes, the job LPUSHed onto the one queue."""
    now = str(time.time())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job_id), mapping={"id": job_id, "user": "u", "state": "queued",
                                             "created": now, "updated": now})
        pipe.set(keys.token(job_id), "blob", ex=JOB_TTL)
        pipe.zadd(keys.jobs, {job_id: float(now)})
        pipe.xadd(keys.log(job_id), {"kind": "state", "state": "queued", "message": "Queued",
                                     "ts": now}, maxlen=LOG_MAXLEN, approximate=True)
        pipe.lpush(keys.queue, job_id)
        await pipe.execute()
    await JobStore(redis, keys).prune(float(now))


async def _blmove_sample(clients, keys: Keys, i: int) -> float:
    hub, runners = clients[0], clients[1:]
    waiters = [asyncio.create_task(r.blmove(keys.queue, keys.claimed(f"r{n}"), 5, "RIGHT",
                                            "LEFT")) for n, r in enumerate(runners)]
    return await _first_claim(waiters, _main_create(hub, keys, f"job-{i}"))


async def _first_claim(waiters: list[asyncio.Task], create) -> float:
    """Seconds from queueing a job (``create``, awaited once the runners block) until
    the first of them holds it; the others stop waiting."""
    await asyncio.sleep(0.01)  # all blocked
    t0 = time.perf_counter()
    await create
    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    elapsed = time.perf_counter() - t0
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return elapsed


async def _script_sample(clients, keys: Keys, i: int, profiles: list[str],
                         job_profile: str) -> float:
    stores = [JobStore(c, keys) for c in clients]
    hub, runners = stores[0], stores[1:]
    waiters = [asyncio.create_task(s.claim(f"r{n}", 5, profiles))
               for n, s in enumerate(runners)]
    return await _first_claim(waiters, hub.create(
        f"job-{i}", {"user": f"u{i % 7}", "profile": job_profile}, "blob"))


async def run(samples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            for n_runners in (1, 10):
                clients = [aioredis.from_url(server.url, decode_responses=True)
                           for _ in range(n_runners + 1)]
                rows = {}
                for name, sample in [
                    ("BLMOVE (main)", lambda i, c=clients: _blmove_sample(c, Keys("b:"), i)),
                    ("claim script, default", lambda i, c=clients: _script_sample(
                        c, Keys("s:"), i, ["default"], "")),
                    ("claim script, gpu+default runners, gpu job",
                     lambda i, c=clients: _script_sample(c, Keys("g:"), i, ["gpu", "default"],
                                                         "gpu")),
                ]:
                    await clients[0].flushdb()
                    times = [await sample(i) for i in range(samples)]
                    rows[name] = times
                base = statistics.median(rows["BLMOVE (main)"])
                print(f"{n_runners} idle runner(s), {samples} samples:")
                for name, times in rows.items():
                    print(f"  {name:45s} p50 {pct(times, 50):6.2f} ms  p99 {pct(times, 99):6.2f}"
                          f" ms  p50 ratio {statistics.median(times) / base:4.2f}")
                for c in clients:
                    await c.aclose()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    asyncio.run(run(parser.parse_args().samples))


if __name__ == "__main__":
    main()
