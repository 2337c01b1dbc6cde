"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

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
