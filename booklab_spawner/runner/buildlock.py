"""One build per image across all runners.

The first job that needs an image takes ``build_lock:<image hash>`` (SET NX
with a short TTL whose value names its runner and job) and refreshes it while
repo2docker runs, so the lock dies with a runner that dies. Any other job
that needs the same image meanwhile follows the builder's log (repo2docker's
lines appear in its own log too) and, when the lock is gone, finds the image
built, or takes the lock and builds itself if that build failed. A lock whose
runner has no heartbeat any more is broken at once rather than waited out: that
runner died mid-build (its job, requeued, is often the very one that waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis

from .. import jobs as J
from ..keys import Keys

log = logging.getLogger(__name__)

LOCK_TTL = 30  # seconds; a dead builder's lock is gone after this
LOCK_REFRESH = 10  # seconds between refreshes while the build runs
FOLLOW_BLOCK_MS = 1000  # how long one read of the builder's log blocks

_REFRESH_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the lock, the holder's heartbeat; ARGV: the holder's lock value
_BREAK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

Relay = Callable[[str, str], Awaitable[None]]  # (message, phase)


class BuildLock:
    def __init__(self, redis: aioredis.Redis, keys: Keys, image_hash: str,
                 runner_id: str, job_id: str):
        self.redis = redis
        self.keys = keys
        self.key = keys.build_lock(image_hash)
        self.value = f"{runner_id} {job_id}"
        self._refresh = redis.register_script(_REFRESH_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._break = redis.register_script(_BREAK_LUA)

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.value, nx=True, ex=LOCK_TTL))

    async def holder(self) -> tuple[str, str] | None:
        """(runner id, job id) of the current builder, or None."""
        value = await self.redis.get(self.key)
        if not value or " " not in value:
            return None
        runner_id, job_id = value.split(" ", 1)
        return runner_id, job_id

    async def break_if_dead(self, holder: tuple[str, str]) -> bool:
        """Delete the lock if ``holder`` still has it and its runner's heartbeat is
        gone (it died building); True if it was deleted."""
        runner_id, job_id = holder
        try:
            heartbeat = self.keys.heartbeat(runner_id)  # checks the id read from Redis
        except ValueError:
            return False
        return bool(await self._break(keys=[self.key, heartbeat],
                                      args=[f"{runner_id} {job_id}"]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.value])

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        """Keep the (acquired) lock alive while the body runs; release it after."""
        task = asyncio.create_task(self._keep_alive())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.shield(self.release())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(LOCK_REFRESH)
            try:
                if not await self._refresh(keys=[self.key], args=[self.value, LOCK_TTL]):
                    log.warning("lost build lock %s", self.key)
            except Exception as e:  # Redis hiccup: the next refresh retries
                log.warning("refreshing build lock %s failed: %s", self.key, e)

    async def follow(self, store: J.JobStore, builder_job: str, relay: Relay) -> None:
        """Relay the builder's build lines until its lock is released or it moves on."""
        holder = (await self.holder() or ("", ""))[1]
        building = False
        stream = store.follow_log(builder_job, block_ms=FOLLOW_BLOCK_MS, until=())
        async with contextlib.aclosing(stream):
            async for entry in stream:
                if entry is None:
                    if (await self.holder() or ("", ""))[1] != holder:
                        return
                    continue
                if entry.kind == "state":
                    if building and entry.state != J.BUILDING:
                        return
                    building = entry.state == J.BUILDING
                elif building:
                    await relay(entry.message, entry.phase or J.BUILDING)
