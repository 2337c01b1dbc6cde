"""Serving the app on a socket, with the connection-level limits aiohttp leaves open.

- A new connection has `header_timeout` seconds to send a whole request head; then it
  is closed (aiohttp alone waits its keep-alive timeout, an hour by default).
- An idle keep-alive connection is closed after `keepalive_timeout` seconds; that also
  bounds a second request whose head dribbles in.
- A handler can learn that its client has gone (`gone(request)`), so that a parked long
  poll is answered at once, not after its 25 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from chatroom.config import Settings

__all__ = [
    "ConnectionGuard",
    "GuardedRunner",
    "gone",
    "guard_key",
    "limit_send_buffer",
    "listen",
    "on_gone",
    "request_started",
]


class ConnectionGuard:
    """Each connection's header deadline, and who waits to hear that a client went.

    Built by create_app (its app key is `guard_key`); told of connections by the
    server that GuardedRunner makes.
    """

    def __init__(self, header_timeout: float) -> None:
        self.header_timeout = header_timeout
        # connections whose first request head has not come yet -> their deadline
        self._waiting: dict[RequestHandler, asyncio.TimerHandle] = {}
        # connections with a handler waiting to hear that the client went
        self._gone: dict[RequestHandler, asyncio.Future[None]] = {}

    def made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._waiting[handler] = asyncio.get_running_loop().call_later(
            self.header_timeout, self._too_slow, handler, transport
        )

    def _too_slow(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._waiting.pop(handler, None)
        # no answer: a client that has not finished its request head in this time is
        # not waiting for one
        transport.abort()

    def started(self, handler: RequestHandler) -> None:
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def lost(self, handler: RequestHandler) -> None:
        self.started(handler)
        waiter = self._gone.pop(handler, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def gone(self, handler: RequestHandler) -> None:
        """Returns when the client of `handler`'s connection has gone."""
        transport = handler.transport
        if transport is None or transport.is_closing():
            return
        waiter = self._gone.get(handler)
        if waiter is None:
            waiter = self._gone[handler] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.shield(waiter)
        finally:
            if not waiter.done() and self._gone.get(handler) is waiter:
                del self._gone[handler]
                waiter.cancel()

    def on_gone(self, handler: RequestHandler, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (once) when the client of `handler`'s connection has gone, at
        once if it has; answers a function that forgets it. One watcher per connection,
        as gone() is: a task-free way for a stream to hear of it."""
        transport = handler.transport
        if transport is None or transport.is_closing():
            callback()
            return _nothing
        waiter = self._gone.get(handler)
        if waiter is None:
            waiter = self._gone[handler] = asyncio.get_running_loop().create_future()

        def went(_: asyncio.Future[None]) -> None:
            callback()

        waiter.add_done_callback(went)

        def forget() -> None:
            waiter.remove_done_callback(went)
            if not waiter.done() and self._gone.get(handler) is waiter:
                del self._gone[handler]
                waiter.cancel()

        return forget


def _nothing() -> None:
    return None


guard_key = web.AppKey("chatroom_connection_guard", ConnectionGuard)


class _Handler(RequestHandler):
    """aiohttp's connection handler, except that a request it cannot parse (a bad header
    byte, two Content-Lengths, a broken chunk, a body not in its Content-Encoding) is
    logged as what it is: the client's mistake, answered 400, in one line at INFO.
    aiohttp logs it at ERROR with a traceback, so that anyone could fill the log with
    tracebacks."""

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError):
            # a body nobody read, drained after the answer: the same mistake
            self.logger.info("malformed request body: %s", str(exc)[:200])
            return
        if isinstance(exc, HttpProcessingError):
            self.logger.info(
                "malformed request refused (%s): %s", exc.code, str(exc.message)[:200]
            )
            return
        super().log_exception(*args, **kw)


class _GuardedServer(web.Server):
    """aiohttp's connection manager, telling the guard of each connection's start and end."""

    guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def connection_made(
        self, handler: RequestHandler, transport: asyncio.Transport
    ) -> None:
        super().connection_made(handler, transport)
        self.guard.made(handler, transport)

    def connection_lost(
        self, handler: RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self.guard.lost(handler)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections have a header timeout and a keep-alive timeout,
    and tell of their end. The app must come from create_app."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=settings.keepalive_timeout, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # the same server, with the two hooks above (aiohttp builds it; we extend it)
        server.__class__ = _GuardedServer
        cast(_GuardedServer, server).guard = self.app[guard_key]
        return server


def request_started(request: web.Request) -> None:
    """The request head has come: the header timeout no longer applies to it."""
    guard = request.app.get(guard_key)
    if guard is not None:
        guard.started(request.protocol)


async def gone(request: web.Request) -> None:
    """Returns when the client of `request` has closed its connection."""
    await request.app[guard_key].gone(request.protocol)


def on_gone(request: web.Request, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` when the client of `request` has closed its connection; answers a
    function that forgets it (see ConnectionGuard.on_gone)."""
    return request.app[guard_key].on_gone(request.protocol, callback)


def limit_send_buffer(transport: asyncio.BaseTransport | None, size: int) -> None:
    """Cap the kernel's send buffer of a streaming socket (0: leave the system's).

    A client that stops reading then holds at most about this much in the kernel (Linux
    doubles the figure for its bookkeeping) besides the in-process max_unsent, instead of
    tcp_wmem's maximum (4 MB); the kernel no longer grows the buffer by itself.
    """
    if size <= 0 or transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def listen(
    runner: web.AppRunner, host: str, port: int, reuse_port: bool = False
) -> tuple[web.TCPSite, int]:
    """Start serving on host:port; returns the site and the port bound."""
    # aiohttp's backlog is 128: after a restart every client reconnects at once, and
    # a full queue drops connections for seconds (the kernel caps it at somaxconn)
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=4096)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return site, bound
