"""Runner registration and liveness, as seen from both ends.

A runner adds its id to ``runners``, describes itself in ``runner:<id>`` and
keeps ``heartbeat:<id>`` alive (30 s expiry, refreshed every 10 s, unless the
runner is configured otherwise: ``--heartbeat-ttl``, ``--heartbeat-interval``). A
runner whose heartbeat key is gone is dead, whatever its record says.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from .keys import Keys

HEARTBEAT_TTL = 30  # seconds; the seed's expiry (the runner's default)
HEARTBEAT_INTERVAL = 10  # seconds between refreshes, well inside the TTL (default)


async def register(redis: aioredis.Redis, keys: Keys, runner_id: str,
                   info: dict[str, Any], ttl: int = HEARTBEAT_TTL) -> None:
    record = {k: str(v) for k, v in info.items()}
    now = str(time.time())
    record.update(id=runner_id, started=now, beat=now)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.sadd(keys.runners, runner_id)
        pipe.delete(keys.runner(runner_id))
        pipe.hset(keys.runner(runner_id), mapping=record)
        pipe.set(keys.heartbeat(runner_id), str(time.time()), ex=ttl)
        await pipe.execute()


async def beat(redis: aioredis.Redis, keys: Keys, runner_id: str,
               info: dict[str, Any] | None = None, ttl: int = HEARTBEAT_TTL) -> None:
    now = str(time.time())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.heartbeat(runner_id), now, ex=ttl)
        pipe.sadd(keys.runners, runner_id)
        record = {k: str(v) for k, v in (info or {}).items()}
        record["beat"] = now  # when the heartbeat was last refreshed (for reapers)
        pipe.hset(keys.runner(runner_id), mapping=record)
        await pipe.execute()


async def deregister(redis: aioredis.Redis, keys: Keys, runner_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.srem(keys.runners, runner_id)
        pipe.delete(keys.heartbeat(runner_id), keys.runner(runner_id))
        await pipe.execute()


async def dead_runners(redis: aioredis.Redis, keys: Keys) -> dict[str, float]:
    """Registered runners without a heartbeat -> time of their last beat (0 if unknown)."""
    ids = sorted(await redis.smembers(keys.runners))
    if not ids:
        return {}
    flags = await redis.mget([keys.heartbeat(i) for i in ids])
    dead: dict[str, float] = {}
    for runner_id, flag in zip(ids, flags, strict=True):
        if flag is None:
            last = await redis.hget(keys.runner(runner_id), "beat")
            dead[runner_id] = float(last or 0)
    return dead


async def forget(redis: aioredis.Redis, keys: Keys, runner_id: str) -> None:
    """Remove every trace of a dead runner whose jobs were all reaped."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.srem(keys.runners, runner_id)
        pipe.delete(keys.runner(runner_id), keys.commands(runner_id))
        await pipe.execute()


async def is_alive(redis: aioredis.Redis, keys: Keys, runner_id: str) -> bool:
    return bool(runner_id) and bool(await redis.exists(keys.heartbeat(runner_id)))


async def alive_runners(redis: aioredis.Redis, keys: Keys) -> list[str]:
    ids = sorted(await redis.smembers(keys.runners))
    if not ids:
        return []
    flags = await redis.mget([keys.heartbeat(i) for i in ids])
    return [i for i, f in zip(ids, flags, strict=True) if f is not None]


async def alive_labels(redis: aioredis.Redis, keys: Keys) -> dict[str, dict[str, str]]:
    """``runner id -> labels`` of the live runners (a record without readable labels
    offers none)."""
    ids = await alive_runners(redis, keys)
    if not ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for runner_id in ids:
            pipe.hget(keys.runner(runner_id), "labels")
        raw = await pipe.execute()
    out: dict[str, dict[str, str]] = {}
    for runner_id, text in zip(ids, raw, strict=True):
        try:
            labels = json.loads(text or "{}")
        except ValueError:
            labels = {}
        out[runner_id] = ({str(k): str(v) for k, v in labels.items()}
                          if isinstance(labels, dict) else {})
    return out
