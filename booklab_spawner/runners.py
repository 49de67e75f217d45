"""Runner registration and liveness, as seen from both ends.

A runner adds its id to ``runners``, describes itself in ``runner:<id>`` and
keeps ``heartbeat:<id>`` alive (30 s expiry, refreshed every 10 s). A runner
whose heartbeat key is gone is dead, whatever its record says.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from .keys import Keys

HEARTBEAT_TTL = 30  # seconds; the seed's expiry
HEARTBEAT_INTERVAL = 10  # seconds between refreshes, well inside the TTL


async def register(redis: aioredis.Redis, keys: Keys, runner_id: str,
                   info: dict[str, Any]) -> None:
    record = {k: str(v) for k, v in info.items()}
    record.update(id=runner_id, started=str(time.time()))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.sadd(keys.runners, runner_id)
        pipe.delete(keys.runner(runner_id))
        pipe.hset(keys.runner(runner_id), mapping=record)
        pipe.set(keys.heartbeat(runner_id), str(time.time()), ex=HEARTBEAT_TTL)
        await pipe.execute()


async def beat(redis: aioredis.Redis, keys: Keys, runner_id: str,
               info: dict[str, Any] | None = None) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.heartbeat(runner_id), str(time.time()), ex=HEARTBEAT_TTL)
        pipe.sadd(keys.runners, runner_id)
        if info:
            pipe.hset(keys.runner(runner_id), mapping={k: str(v) for k, v in info.items()})
        await pipe.execute()


async def deregister(redis: aioredis.Redis, keys: Keys, runner_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.srem(keys.runners, runner_id)
        pipe.delete(keys.heartbeat(runner_id), keys.runner(runner_id))
        await pipe.execute()


async def is_alive(redis: aioredis.Redis, keys: Keys, runner_id: str) -> bool:
    return bool(runner_id) and bool(await redis.exists(keys.heartbeat(runner_id)))


async def alive_runners(redis: aioredis.Redis, keys: Keys) -> list[str]:
    ids = sorted(await redis.smembers(keys.runners))
    if not ids:
        return []
    flags = await redis.mget([keys.heartbeat(i) for i in ids])
    return [i for i, f in zip(ids, flags, strict=True) if f is not None]
