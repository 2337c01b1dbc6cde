"""Server-Sent Events: `id:` is the event id; resumes from Last-Event-ID or lastReceived."""

from __future__ import annotations

import asyncio
import contextlib
import random

from aiohttp import web

from chatroom.broker import BackendUnavailable, Delivery, SlowConsumer, Subscription
from chatroom.core.events import read_cursor
from chatroom.web.edge import checked, policy
from chatroom.web.saying import enter_room, new_conn_id
from chatroom.web.server import limit_send_buffer
from chatroom.web.state import chat_key

__all__ = ["routes"]

routes = web.RouteTableDef()

# A client that takes longer than this to accept a write is stalled: end its stream.
_WRITE_TIMEOUT = 30.0
# How long the stream's last event and its end wait for a client to take them.
_CLOSE_TIMEOUT = 10.0

_TOO_SLOW = (
    b'event: cutoff\ndata: {"type":"error","error":"too_slow",'
    b'"reason":"too slow: reconnect and resume from your last id"}\n\n'
)
_UNAVAILABLE = (
    b'event: cutoff\ndata: {"type":"error","error":"unavailable",'
    b'"reason":"backend unavailable: reconnect later from your last id"}\n\n'
)
_LEFT = b'event: left\ndata: {"type":"left","reason":"you left the room"}\n\n'


async def _next(sub: Subscription) -> list[Delivery] | None:
    try:
        return await anext(sub)
    except StopAsyncIteration:
        return None


@routes.get("/sse/room/events")
@policy(origin=True, session="required", room=True, stream="sse")
async def events(request: web.Request) -> web.StreamResponse:
    chat = request.app[chat_key]
    edge = checked(request)
    room, session = edge.room, edge.require_session()
    cursor = read_cursor(
        request.headers.get("Last-Event-ID") or request.query.get("lastReceived")
    )
    conn = new_conn_id()
    await enter_room(chat, room, edge.address)
    # refusals (NicknameTaken 409, LeftRoom 410, BackendUnavailable 503) are the edge's
    await chat.broker.connect(room, session.user, session.sid, conn)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            # nginx: pass each event through at once
            "X-Accel-Buffering": "no",
        }
    )
    chat.connections["sse"] += 1
    pending: asyncio.Task[list[Delivery] | None] | None = None
    last_words = b""
    try:
        await response.prepare(request)
        limit_send_buffer(request.transport, chat.settings.socket_send_buffer)
        # The browser's reconnect delay, jittered so a restart does not bring all back at once.
        await response.write(f"retry: {random.randint(1000, 4000)}\n\n".encode())
        async with chat.broker.subscribe(room, cursor, session=session.sid) as sub:
            transport = request.transport
            if transport is not None:
                # HTTP/1.1 streams the body in chunks; HTTP/1.0 as it comes
                chunked = response.headers.get("Transfer-Encoding") == "chunked"
                sub.set_sink(transport, "sse_chunk" if chunked else "sse")
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(_next(sub))
                done, _ = await asyncio.wait({pending}, timeout=chat.settings.sse_heartbeat)
                if not done:
                    async with asyncio.timeout(_WRITE_TIMEOUT):
                        await response.write(b": heartbeat\n\n")
                    continue
                try:
                    batch = pending.result()
                except SlowConsumer:
                    last_words = _TOO_SLOW
                    break
                except BackendUnavailable:
                    last_words = _UNAVAILABLE
                    break
                pending = None
                if batch is None:
                    if sub.reason == "left":
                        # tell the page not to reconnect (EventSource would, by itself)
                        last_words = _LEFT
                    break
                async with asyncio.timeout(_WRITE_TIMEOUT):
                    await response.write(b"".join(item.sse for item in batch))
    except (ConnectionError, TimeoutError):
        # gone (reset, or lost while a write waited), or stalled past the write
        # timeout: either way this stream is over
        pass
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        chat.connections["sse"] -= 1
        await chat.broker.disconnect(conn)
    # The stream's last words and its end; a client that does not read them (one cut
    # off as too slow, most of all) is not waited for: its connection is dropped.
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            if response.prepared:
                if last_words:
                    await response.write(last_words)
                await response.write_eof()
    except (ConnectionError, TimeoutError):
        transport = request.transport
        if transport is not None:
            transport.abort()
    return response
