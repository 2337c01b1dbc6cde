"""Fixtures for the broker suites: one factory that opens any backend by kind.

Every test that takes `backends` runs once per backend in BACKENDS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from chatroom.broker import Backend, Broker, Fanout, open_backend
from chatroom.broker.backend import Listener

SQLITE_FILE = "chat.db"
# Broker options that are the hub's
_FANOUT = tuple(f.name for f in fields(Fanout))

# The backends the contract suite and the broker suite run against. Redis is a real
# redis-server (tests/conftest.py: the machine's, or one started on a free port), on a
# database emptied before each test, as everything here assumes an empty backend.
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


def _url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / SQLITE_FILE}"
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    raise AssertionError(f"no URL for backend kind {kind!r}")


class Backends:
    """Opens backends (and brokers over them) of one kind; closes them all at teardown."""

    def __init__(self, kind: str, url: str, path: Path | None = None) -> None:
        self.kind = kind
        self.url = url
        # the database file, for sqlite
        self.path = path
        self._open: list[Backend | Broker] = []

    def open(
        self, retention: int = 10_000, presence_clock: Callable[[], float] | None = None
    ) -> Backend:
        """Build a backend of this kind, not started. Same URL: same sqlite file."""
        return open_backend(self.url, retention=retention, presence_clock=presence_clock)

    async def start(
        self,
        retention: int = 10_000,
        listener: Listener | None = None,
        presence_clock: Callable[[], float] | None = None,
    ) -> Backend:
        backend = self.open(retention, presence_clock)
        if listener is not None:
            backend.set_listener(listener)
        await backend.start()
        self._open.append(backend)
        return backend

    async def broker(
        self,
        retention: int = 10_000,
        presence_clock: Callable[[], float] | None = None,
        **options: Any,
    ) -> Broker:
        # the hub's options as keywords too, for short calls: broker(max_pending=8)
        fanout = {k: options.pop(k) for k in _FANOUT if k in options}
        broker = Broker(
            self.open(retention, presence_clock), fanout=Fanout(**fanout), **options
        )
        await broker.start()
        self._open.append(broker)
        return broker

    async def close(self) -> None:
        while self._open:
            await self._open.pop().close()


@pytest.fixture(params=BACKENDS)
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    kind: str = request.param
    path = tmp_path / SQLITE_FILE if kind == "sqlite" else None
    factory = Backends(kind, _url(kind, request, tmp_path), path)
    yield factory
    await factory.close()


@pytest.fixture
async def sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    """SQLite only: for what only a file can show (durability, reopening, SIGKILL)."""
    factory = Backends("sqlite", _url("sqlite", request, tmp_path), tmp_path / SQLITE_FILE)
    yield factory
    await factory.close()
