"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.redis_server import RedisServer, start_redis
from tests.support import Server, new_client, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """The app on a real loopback socket, over SQLite in a fresh file."""
    srv = await start_server(f"sqlite:///{tmp_path / 'chat.db'}")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_client() as session:
        yield session


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server shared by the session (the machine's, or one we start)."""
    srv = start_redis()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A redis:// URL on database 15, emptied before each test."""
    url = redis_server.url(15)
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url
