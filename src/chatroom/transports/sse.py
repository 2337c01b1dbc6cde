"""Server-Sent Events: `id:` is the event id; resumes from Last-Event-ID or lastReceived.

One stream may follow several rooms (`?follow=R:C&follow=...`, see transports.rooms):
each room's events come in its id order; a room that ends for the session gets
`event: left` naming it while the others go on.
"""

from __future__ import annotations

import asyncio
import random

from aiohttp import web

from chatroom.broker import BackendUnavailable, SlowConsumer, Subscription
from chatroom.transports.rooms import LEFT, connect_rooms, disconnect_rooms, ended, named
from chatroom.web.edge import checked, policy
from chatroom.web.refusals import Refused
from chatroom.web.saying import enter_room
from chatroom.web.server import limit_send_buffer, on_gone
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


def _left(room: str, refused: Refused) -> bytes:
    """A room of a multi-room stream ended for this session; the others go on."""
    return b"event: left\ndata: " + ended(room, refused) + b"\n\n"


@routes.get("/sse/room/events")
@policy(origin=True, session="required", rooms=True, last_event_id=True, stream="sse")
async def events(request: web.Request) -> web.StreamResponse:
    chat = request.app[chat_key]
    edge = checked(request)
    session = edge.require_session()
    for follow in edge.follows:
        await enter_room(chat, follow.room, edge.address)
    # refusals (NicknameTaken 409, LeftRoom 410 for the one room of the single-room
    # form; BackendUnavailable 503) are the edge's
    joined = await connect_rooms(chat, edge.follows, session, edge.named)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            # nginx: pass each event through at once
            "X-Accel-Buffering": "no",
        }
    )
    chat.connections["sse"] += 1
    subs: dict[Subscription, str] = {}
    last_words = b""
    try:
        await response.prepare(request)
        limit_send_buffer(request.transport, chat.settings.socket_send_buffer)
        # The browser's reconnect delay, jittered so a restart does not bring all back at once.
        await response.write(f"retry: {random.randint(1000, 4000)}\n\n".encode())
        for room, refused in joined.refused:
            await response.write(_left(room, refused))
        transport = request.transport
        # HTTP/1.1 streams the body in chunks; HTTP/1.0 as it comes
        chunked = response.headers.get("Transfer-Encoding") == "chunked"
        for follow, _ in joined.accepted:
            sub = chat.broker.subscribe(follow.room, follow.cursor, session=session.sid)
            subs[sub] = follow.room
            if transport is not None:
                sub.set_sink(transport, "sse_chunk" if chunked else "sse")
        # (every room it asked for may have been refused, each with its notice)
        if subs:
            wake = asyncio.Event()
            forget = on_gone(request, wake.set)
            try:
                last_words = await _stream(
                    response, transport, subs, wake, edge.named, chat.settings.sse_heartbeat
                )
            finally:
                forget()
    except (ConnectionError, TimeoutError):
        # gone (reset, or lost while a write waited), or stalled past the write
        # timeout: either way this stream is over
        pass
    finally:
        for sub in subs:
            sub.close()
        chat.connections["sse"] -= 1
        await disconnect_rooms(chat, [conn for _, conn in joined.accepted])
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


async def _stream(
    response: web.StreamResponse,
    transport: asyncio.BaseTransport | None,
    subs: dict[Subscription, str],
    wake: asyncio.Event,
    many: bool,
    heartbeat: float,
) -> bytes:
    """Write the rooms' events until the stream ends; answers its last words.

    While a subscriber is caught up, the fan-out writes its live events to the socket
    itself; this loop writes what the subscriptions hand over (history, catch-up, what
    came while the socket was full), a heartbeat after `heartbeat` seconds without, and
    a room's notice when it ends in the multi-room form. `wake` is set when there is
    something to do: a subscription has news or ended, or the client went (then this
    raises ConnectionResetError).
    """
    for sub in subs:
        sub.on_ready(wake.set)
    while subs:
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        # cleared before looking: a subscriber that has news meanwhile sets it again
        wake.clear()
        wrote = False
        for sub, room in list(subs.items()):
            try:
                batch = await sub.take()
            except StopAsyncIteration:
                if sub.reason != "left":
                    # the server is shutting down: the stream ends
                    return b""
                del subs[sub]
                if not many:
                    # tell the page not to reconnect (EventSource would, by itself)
                    return _LEFT
                if not subs:
                    return _left(room, LEFT)
                async with asyncio.timeout(_WRITE_TIMEOUT):
                    await response.write(_left(room, LEFT))
                continue
            except SlowConsumer:
                return _TOO_SLOW
            except BackendUnavailable:
                return _UNAVAILABLE
            if batch:
                items = named(batch, room) if many else batch
                async with asyncio.timeout(_WRITE_TIMEOUT):
                    await response.write(b"".join(item.sse for item in items))
                wrote = True
        if wrote or wake.is_set():
            continue
        try:
            async with asyncio.timeout(heartbeat):
                await wake.wait()
        except TimeoutError:
            async with asyncio.timeout(_WRITE_TIMEOUT):
                await response.write(b": heartbeat\n\n")
    return b""
