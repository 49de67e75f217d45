"""The hub's one Redis client holds a connection per blocking read (a real redis-server).

Every pending launch follows its job log with ``XREAD BLOCK`` (the spawner's wait
for ``running``, and each progress or build-log stream), each on a connection of
its own from the client's pool. redis-py 8 caps a pool at 100 connections and
raises ``MaxConnectionsError`` past it: with 100 launches pending (JupyterHub's
default ``concurrent_spawn_limit``), every other Redis call of the hub failed —
the git proxy's grant lookup first (the load benchmark, docs/performance.md).
"""

from __future__ import annotations

import asyncio

from booklab_spawner.redis_client import connect

KEY = "booklab-test-pool:log"
READERS = 150  # more than redis-py's default pool of 100


async def test_more_blocking_reads_than_a_default_pool_and_other_calls_still_work(
        redis_server, redis):
    client = connect(redis_server.url)
    readers = [asyncio.create_task(client.xread({KEY: "$"}, block=20_000))
               for _ in range(READERS)]
    try:
        await asyncio.sleep(0.5)  # every reader is blocked in Redis by now
        assert [t for t in readers if t.done()] == []
        assert (await client.info("clients"))["connected_clients"] > READERS
        assert await client.set("booklab-test-pool:other", "1")  # a call that is not a read
        await client.xadd(KEY, {"message": "hello"})
        answers = await asyncio.wait_for(asyncio.gather(*readers), 15)
        assert all(a[0][1][0][1] == {"message": "hello"} for a in answers)
    finally:
        for t in readers:
            t.cancel()
        await client.aclose()
