"""A real server for the tests on a free loopback port, and waiting for things to hold."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from chatroom.app import create_app
from chatroom.broker import Backend, Broker, open_backend
from chatroom.config import Settings
from chatroom.web.server import GuardedRunner, listen
from chatroom.web.state import Chat, chat_key

__all__ = [
    "PRESENT_FOR",
    "SECRET",
    "UNLIMITED",
    "Server",
    "eventually",
    "new_client",
    "present",
    "serving",
    "start_server",
]


SECRET = b"test-secret-not-for-production-0123456789"


# Settings that lift the rate limits, for tests whose subject is not them.
UNLIMITED: dict[str, Any] = {
    "rate_limit": 1e6, "rate_burst": 1e6, "address_rate_limit": 1e6,
    "address_rate_burst": 1e6, "demo_rate_limit": 1e6, "demo_rate_burst": 1e6,
    "room_rate_limit": 1e6, "room_rate_burst": 1e6,
}


@dataclass
class Server:
    url: str
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def chat(self) -> Chat:
        return self.app[chat_key]

    @property
    def broker(self) -> Broker:
        return self.chat.broker

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(
    backend_url: str = "memory://",
    backend: Backend | None = None,
    presence_clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> Server:
    """Serve the app on 127.0.0.1 on a free port.

    With a presence_clock (a ManualClock), presence expiries count on it and the loops
    of the presence service are stopped: the test moves the clock and runs their rounds
    itself (server.broker.presence.reap(), .beat()).
    """
    settings = Settings(backend=backend_url, secret=SECRET, port=0, **overrides)
    if presence_clock is not None and backend is None:
        backend = open_backend(
            backend_url, retention=settings.retention, presence_clock=presence_clock
        )
    app = create_app(settings, backend=backend)
    runner = GuardedRunner(app, settings, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    if presence_clock is not None:
        await app[chat_key].broker.presence.stop()
    _, port = await listen(runner, "127.0.0.1", 0)
    return Server(f"http://127.0.0.1:{port}", app, runner, port)


@asynccontextmanager
async def serving(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    """start_server over SQLite in tmp_path with Settings overrides; stopped on exit."""
    srv = await start_server(f"sqlite:///{tmp_path / 'chat.db'}", **overrides)
    try:
        yield srv
    finally:
        await srv.stop()


# How long present() keeps a test's speaker in a room: longer than any test runs.
PRESENT_FOR = 3600.0


async def present(broker: Broker, room: str, user: str, session: str) -> None:
    """Make `session` a live member of `room` as `user`, so that it may speak there.

    Through the backend's presence, as the welcome page does (also after a leave), but
    without the join event: the tests that use it count the events of the room, and
    only what they say.
    """
    await broker.backend.presence.touch(
        room, user, session, f"test:{session}", PRESENT_FOR, rejoin=True
    )


def new_client() -> aiohttp.ClientSession:
    # unsafe=True: keep cookies set by an IP-address host such as 127.0.0.1
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    within: float = 5.0,
    step: float = 0.01,
    why: Callable[[], str] | None = None,
) -> None:
    """Wait until check() (sync or async) is true; fail after `within` seconds, saying
    why() if given (a log, the state seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            said = f": {why()}" if why is not None else ""
            raise AssertionError(f"not true within {within} s: {check}{said}")
        await asyncio.sleep(step)
