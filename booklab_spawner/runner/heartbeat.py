"""Keeps the runner's ``heartbeat:<id>`` alive and its record current."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from .. import registry
from ..keys import Keys

log = logging.getLogger(__name__)


async def heartbeat_loop(redis: aioredis.Redis, keys: Keys, runner_id: str,
                         info: Callable[[], dict[str, Any]], stop: asyncio.Event,
                         interval: float = registry.HEARTBEAT_INTERVAL,
                         ttl: int = registry.HEARTBEAT_TTL) -> None:
    """Refresh the heartbeat (expiring after ``ttl`` s) every ``interval`` s until
    ``stop`` is set."""
    while not stop.is_set():
        try:
            await registry.beat(redis, keys, runner_id, info(), ttl)
        except Exception as e:  # keep beating through a Redis restart
            log.warning("heartbeat failed: %s", e)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
