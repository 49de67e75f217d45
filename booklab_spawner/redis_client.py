"""One ``redis.asyncio`` client per (URL, event loop), with retries and backoff."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
URL_ENV = "BOOKLAB_REDIS_URL"  # the environment variable hub and runner read


def default_url() -> str:
    """The Redis URL when none is configured: ``$BOOKLAB_REDIS_URL``, else the local one
    (the hub's ``BooklabSpawner.redis_url`` and the runner's ``--redis-url`` default)."""
    return os.environ.get(URL_ENV, DEFAULT_URL)


_clients: dict[tuple[str, int], aioredis.Redis] = {}
# redis-py 8 gives up on a reply after 5 s by default, which races Booklab's blocking
# reads (XREAD BLOCK up to 5 s in the spawner's progress, BLMOVE/BLPOP): a socket
# timeout well above the longest block a caller asks for
SOCKET_TIMEOUT = 30.0
# every blocking read holds a connection of the pool for its whole block: one per pending
# launch (the spawner follows its job log) and per open progress/build-log stream.
# redis-py 8 caps a pool at 100 and raises past it, which a burst of 100 pending launches
# reached (docs/performance.md); Redis's own maxclients (10000) is the real limit
MAX_CONNECTIONS = 10_000


def connect(url: str) -> aioredis.Redis:
    """A new client; strings decoded, transient errors retried with backoff."""
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT,
        max_connections=MAX_CONNECTIONS,
        health_check_interval=30,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=5, base=0.1), retries=5),
        retry_on_error=[ConnectionError, TimeoutError],
    )


def get_redis(url: str) -> aioredis.Redis:
    """The shared client for ``url`` on the running loop (created on first use)."""
    loop = asyncio.get_running_loop()
    key = (url, id(loop))
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = connect(url)
    return client
