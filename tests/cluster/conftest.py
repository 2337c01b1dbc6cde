"""Fixtures for the cluster tests: nodes as processes sharing one Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.cluster.nodes import Cluster
from tests.redis_server import RedisServer, start_redis


@pytest.fixture
async def cluster(redis_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Nodes on the shared test Redis (db 15, emptied first); all stopped at teardown."""
    nodes = Cluster(redis_url, tmp_path)
    try:
        yield nodes
    finally:
        await nodes.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and restart."""
    server = start_redis(own=True)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def private_cluster(
    private_redis: RedisServer, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Nodes on the private Redis."""
    nodes = Cluster(private_redis.url(0), tmp_path)
    try:
        yield nodes
    finally:
        await nodes.close()
