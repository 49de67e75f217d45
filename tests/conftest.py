"""Fixtures on real services: Redis, Docker, the GitLab double, the hub, runners."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from booklab_spawner.jobs import JobStore
from booklab_spawner.keys import Keys
from tests.services import RedisServer

pytest_plugins = [
    "tests.conftest_gitlab",
    "tests.conftest_stack",
    "tests.conftest_runner",
    "tests.conftest_hub",
    "tests.conftest_pages",
    "tests.conftest_mockhub",
    "tests.conftest_hosts",
]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server):
    """A flushed database on the session's redis-server (redis.asyncio, decoded)."""
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> Keys:
    return Keys("booklab-test:")


@pytest.fixture
def store(redis, keys) -> JobStore:
    return JobStore(redis, keys)
