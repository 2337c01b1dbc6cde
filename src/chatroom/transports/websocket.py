"""WebSocket: history (or events after lastReceived) then live, one JSON text frame each.

Each text frame the client sends is one message: {"text": ..., "client_id": ...} or a
bare JSON string. Bad frames get an error frame and the connection stays; binary
frames close with 1003, invalid UTF-8 with 1007, oversized messages with 1009.

One socket may follow several rooms (`?follow=R:C&follow=...`, see transports.rooms):
a message then names its room, {"room": ..., "text": ..., "client_id": ...}; a room
that ends for the session gets a `left` frame naming it, and the socket closes with
4000 only when no room is left.

aiohttp routes and checks the upgrade request; once the 101 is written, the socket is
taken off aiohttp and served by `_Socket`, a protocol of our own (the frames are
`chatroom.core.websocket`). An idle socket is then a transport, a parser, a
subscription and this object: no task, no timer, no suspended handler. Tasks exist
only while there is work: the pump while history or a backlog is being written, the
sayer while messages are being stored. One heartbeat for all sockets pings them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from chatroom.broker import BackendUnavailable, Draft, SlowConsumer, Subscription
from chatroom.core.events import ws_frame
from chatroom.core.validation import InvalidInput
from chatroom.core.websocket import (
    ServerConnection,
    accept_key,
)
from chatroom.transports.rooms import LEFT, connect_rooms, disconnect_rooms, ended, named
from chatroom.web.edge import Ticket, checked, policy
from chatroom.web.params import Follow, room_param
from chatroom.web.refusals import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_LEFT,
    CLOSE_NORMAL,
    CLOSE_TOO_SLOW,
    CLOSE_TRY_AGAIN_LATER,
    answer,
)
from chatroom.web.saying import draft, enter_room, give_back, take_turn
from chatroom.web.security import Session
from chatroom.web.server import limit_send_buffer
from chatroom.web.state import Chat, chat_key, json_error

__all__ = ["heartbeat", "routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

# How long a close frame waits for the client's before the connection is dropped.
CLOSE_TIMEOUT = 10.0
# Messages one socket may have waiting to be stored (past this, the socket stops being
# read and its frames wait in TCP), and how many are stored together at most.
_MAX_WAITING = 256
_RUN = 64


def _frame(kind: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


@routes.get("/websocket/room/socket")
@policy(origin=True, session="required", rooms=True, stream="websocket")
async def socket(request: web.Request) -> web.StreamResponse:
    chat = request.app[chat_key]
    edge = checked(request)
    session = edge.require_session()
    for follow in edge.follows:
        await enter_room(chat, follow.room, edge.address)

    headers = request.headers
    # exactly "websocket", as aiohttp's parser requires to hand over what follows
    if headers.get("Upgrade", "").strip().lower() != "websocket" or not _has_token(
        headers.get("Connection", ""), "upgrade"
    ):
        return json_error(400, "not_websocket", "this URL takes a WebSocket upgrade")
    if request.version < (1, 1):
        return json_error(400, "not_websocket", "a WebSocket upgrade needs HTTP/1.1")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        response = json_error(426, "websocket_version", "only WebSocket version 13 is spoken")
        response.headers["Sec-WebSocket-Version"] = "13"
        return response
    accept = accept_key(headers.get("Sec-WebSocket-Key", ""))
    if accept is None:
        return json_error(400, "not_websocket", "missing or malformed Sec-WebSocket-Key")
    transport = request.transport
    if transport is None or transport.is_closing():
        # the client went before its upgrade was answered: nothing to say, nobody to say it to
        return web.Response(status=400)

    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept.encode()
    )
    limit_send_buffer(transport, chat.settings.socket_send_buffer)
    # the socket outlives this handler: it gives its place under the caps back at its end
    ticket = edge.ticket
    assert ticket is not None
    ticket.kept = True
    sock = _Socket(chat, edge.follows, edge.named, session, edge.address, ticket, transport)
    # Take the connection off aiohttp: from now on its bytes come to `sock`. aiohttp
    # keeps any bytes a client sent behind its request (none, if it waited for the 101
    # as RFC 6455 says it must); they are the socket's first.
    protocol = request.protocol
    tail: bytes = getattr(protocol, "_message_tail", b"")
    transport.pause_reading()
    transport.set_protocol(sock)
    # aiohttp must neither write to nor close the socket now; telling it the connection
    # is lost makes it forget the connection and this handler.
    protocol.transport = None
    protocol.connection_lost(None)
    chat.sockets.add(sock)
    sock.start(tail)
    # aiohttp cannot send this (it no longer has a transport); it logs the 101
    return web.Response(status=101)


# The loop holds tasks weakly: these (letting a socket in, its leave) are held here
# until they are done.
_tasks: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class _Socket(asyncio.Protocol):
    """One WebSocket after its upgrade: reads frames, writes events, closes cleanly."""

    __slots__ = (
        "_again",
        "_close_timer",
        "_drained",
        "_ended",
        "_lost",
        "_opened",
        "_opening",
        "_pump",
        "_said",
        "_saying",
        "address",
        "chat",
        "conns",
        "follows",
        "many",
        "rooms",
        "session",
        "subs",
        "ticket",
        "transport",
        "ws",
    )

    def __init__(
        self,
        chat: Chat,
        follows: tuple[Follow, ...],
        many: bool,
        session: Session,
        address: str,
        ticket: Ticket,
        transport: asyncio.Transport,
    ) -> None:
        self.chat = chat
        self.follows = follows
        # the multi-room form: messages and notices name their room
        self.many = many
        # the rooms a message may name: those it asked for
        self.rooms = frozenset(follow.room for follow in follows)
        self.session = session
        self.address = address
        self.ticket = ticket
        self.transport = transport
        # the presence connection of each room it was let into
        self.conns: list[str] = []
        # the subscription of each room it follows (a room that ended is taken out)
        self.subs: dict[str, Subscription] = {}
        # the protocol's state: what to answer, whether the close frame went out
        self.ws = ServerConnection(chat.settings.max_body)
        # _open() is letting it in (presence, subscription); it is read from then on,
        # and _opened says whether it was let in
        self._opening = True
        self._opened = False
        self._lost = False
        self._close_timer: asyncio.TimerHandle | None = None
        # waits while the kernel's buffer is full (the transport paused our writing)
        self._drained: asyncio.Future[None] | None = None
        # writes history and backlogs; exists only while there is some
        self._pump: asyncio.Task[None] | None = None
        # a subscription had news while the pump was busy with another: look again
        self._again = False
        # what the client said, waiting to be stored (or an error frame to answer in
        # its turn), and the task storing it; both only while there is some
        self._said: deque[tuple[str, Draft] | str] | None = None
        self._saying: asyncio.Task[None] | None = None
        # done when the socket has closed and everything it said is stored
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- opening ----------------------------------------------------------------------

    def start(self, tail: bytes) -> None:
        _keep(asyncio.get_running_loop().create_task(self._open(tail)))

    async def _open(self, tail: bytes) -> None:
        chat, session = self.chat, self.session
        try:
            joined = await connect_rooms(chat, self.follows, session, self.many)
        except Exception as exc:
            refused = answer(exc)
            if refused is None or refused.close_code is None:
                self._refuse(CLOSE_INTERNAL_ERROR, "the server could not open this socket")
                raise
            if isinstance(exc, BackendUnavailable):
                chat.problems.warning("backend", "websocket refused, backend unavailable: %s", exc)
            self._refuse(refused.close_code, refused.reason)
            return
        except BaseException:
            self._refuse(CLOSE_INTERNAL_ERROR, "the server could not open this socket")
            raise
        self.conns = [conn for _, conn in joined.accepted]
        self._opening = False
        self._opened = True
        chat.connections["websocket"] += 1
        if self._lost:
            # gone while it was being let in
            self._end()
            return
        for room, refused in joined.refused:
            self._write(ws_frame(ended(room, refused)))
        if not joined.accepted:
            # every room it asked for was refused, each with its notice
            code = joined.refused[0][1].close_code if joined.refused else None
            self._close(code or CLOSE_LEFT, "no room left to follow")
            self._resume_reading()
            return
        for follow, _ in joined.accepted:
            sub = chat.broker.subscribe(follow.room, follow.cursor, session=session.sid)
            self.subs[follow.room] = sub
            sub.set_sink(self.transport, "ws")
            sub.on_ready(self._ready)
        self._ready()
        if tail:
            self.data_received(tail)
        self._resume_reading()

    def _refuse(self, code: int, reason: str) -> None:
        self._opening = False
        if self._lost:
            self._end()
        else:
            self._close(code, reason)
            # read its answer to the close (what else it sends is ignored now)
            self._resume_reading()

    # --- writing events ---------------------------------------------------------------

    def _ready(self) -> None:
        """A subscription has something for the pump (or has ended)."""
        if self._pump is None:
            if not self._lost and not self.ws.close_sent:
                self._pump = asyncio.get_running_loop().create_task(self._run_pump())
            return
        self._again = True
        if any(sub.reason is not None for sub in self.subs.values()):
            # It ended (cut off as too slow, left, shutdown) while the pump waits for a
            # socket that does not drain: the pump goes on, to say so and close.
            self.resume_writing()

    async def _run_pump(self) -> None:
        """Write what the subscriptions hand over (history, catch-up, what came while
        the socket was full) until every one is caught up; then the fan-out writes live
        events itself until _ready()."""
        subs = self.subs
        try:
            while True:
                self._again = False
                wrote = False
                for room, sub in list(subs.items()):
                    if self.ws.close_sent or self._lost:
                        return
                    try:
                        batch = await sub.take()
                    except StopAsyncIteration:
                        if self.chat.broker.closing or sub.reason != "left":
                            raise
                        if not self.many or len(subs) == 1:
                            raise
                        # left one of its rooms: the others go on
                        del subs[room]
                        self._write(ws_frame(ended(room, LEFT)))
                        continue
                    if batch is None or self.ws.close_sent or self._lost:
                        continue
                    items = named(batch, room) if self.many else batch
                    self.transport.write(b"".join([d.ws for d in items]))
                    wrote = True
                    if self._drained is not None:
                        await self._drained
                if not wrote and not self._again:
                    return
        except StopAsyncIteration:
            # The subscription ended: the server is shutting down, or the user left.
            if self.chat.broker.closing:
                self._close(CLOSE_GOING_AWAY, "server shutting down")
            else:
                if self.many:
                    for room in list(subs):
                        self._write(ws_frame(ended(room, LEFT)))
                self._close(CLOSE_LEFT, "you left the room")
        except SlowConsumer as exc:
            log.info("websocket cut off: %s", exc)
            self._close(CLOSE_TOO_SLOW, "too slow: resume from your last id")
        except ConnectionError:
            # the client has gone
            self.transport.abort()
        except BackendUnavailable as exc:
            # Could not read history: the client retries later from its cursor.
            self.chat.problems.warning("backend", "websocket history read failed: %s", exc)
            self._close(CLOSE_TRY_AGAIN_LATER, "backend unavailable: retry")
        except Exception:
            log.exception("websocket pump failed")
            self._close(CLOSE_INTERNAL_ERROR, "server error: resume from your last id")
        finally:
            self._pump = None

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- reading ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws.failed:
            return
        for text in ws.receive_data(data):
            self._say(self._parse(text))
        if ws.close_sent and self._close_timer is None:
            # the protocol answered the client's close, or failed the connection
            self._closing()
        self._flush()
        if ws.hang_up:
            # the close handshake is done: the server closes the TCP connection first
            self.transport.close()
        elif ws.half_close and not self.transport.is_closing() and self.transport.can_write_eof():
            # the client broke the protocol: it reads the close frame, answers, and closes
            self.transport.write_eof()

    def eof_received(self) -> bool | None:
        # the client half-closed: close our side too
        return None

    # --- saying -----------------------------------------------------------------------

    def _parse(self, raw: str) -> tuple[str, Draft] | str:
        """One frame the client sent: the room and message to store, or the error frame
        to answer."""
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _frame(
                "error",
                error="bad_json",
                reason='each frame must be JSON: {"text": "...", "client_id": "..."} or "text"',
            )
        client_id: object = None
        room: object = None
        if isinstance(payload, str):
            text: object = payload
        elif isinstance(payload, dict):
            text = payload.get("text")
            client_id = payload.get("client_id")
            room = payload.get("room")
        else:
            return _frame(
                "error", error="bad_frame", reason='send {"text": "...", "client_id": "..."}'
            )
        cid = client_id if isinstance(client_id, str) else None
        chat, session = self.chat, self.session
        try:
            where = self._room_of(room)
            message = draft(chat, session, text, client_id)
            take_turn(chat, session, self.address)
        except Exception as exc:
            refused = answer(exc)
            if refused is None:
                raise
            fields: dict[str, Any] = {"client_id": cid}
            if refused.retry_after is not None:
                fields["retry_after"] = round(refused.retry_after, 2)
            return _frame("error", error=refused.code, reason=refused.reason, **fields)
        return where, message

    def _room_of(self, raw: object) -> str:
        """The room a message names: one this socket follows. It may leave it out on a
        socket that follows one room. InvalidInput otherwise."""
        if raw is None:
            if len(self.rooms) == 1:
                return next(iter(self.rooms))
            raise InvalidInput(
                "room",
                'this socket follows several rooms: name one, {"room": ..., "text": ...}',
            )
        room = room_param(raw if isinstance(raw, str) else "", "room")
        if room not in self.rooms:
            raise InvalidInput("room", f"this socket does not follow room {room!r}")
        return room

    def _say(self, item: tuple[str, Draft] | str) -> None:
        said = self._said
        if said is None:
            said = self._said = deque()
        said.append(item)
        if len(said) >= _MAX_WAITING:
            # past this, the client's frames wait in TCP until these are stored
            self.transport.pause_reading()
        if self._saying is None:
            self._saying = asyncio.get_running_loop().create_task(
                self._store_said(), name="chatroom-ws-say"
            )

    async def _store_said(self) -> None:
        """Store what was said, in order; answer each message in order.

        While one run of messages is being committed, the next gathers: a burst from one
        client becomes a few commits, and each subscriber gets it in a few writes.
        """
        said = self._said
        assert said is not None
        try:
            while said:
                head = said[0]
                if isinstance(head, str):
                    said.popleft()
                    self._reply(head)
                else:
                    # a run: the messages that follow in one room
                    room = head[0]
                    run: list[Draft] = []
                    while said and len(run) < _RUN:
                        nxt = said[0]
                        if isinstance(nxt, str) or nxt[0] != room:
                            break
                        said.popleft()
                        run.append(nxt[1])
                    self._resume_reading()
                    for reply in await self._store(room, run):
                        self._reply(reply)
                self._resume_reading()
        finally:
            self._saying = None
            self._said = None
            if self._lost:
                self._end()

    def _resume_reading(self) -> None:
        said = self._said
        if not self._lost and (said is None or len(said) < _MAX_WAITING):
            self.transport.resume_reading()

    async def _store(self, room: str, run: list[Draft]) -> list[str]:
        chat, session = self.chat, self.session
        try:
            stored = await chat.broker.say_many(room, session.user, session.sid, run)
        except Exception as exc:
            refused = answer(exc)
            if refused is not None:
                error, reason = refused.code, refused.reason
            else:
                # a bug, not the client's doing: answer every message, keep the socket
                log.exception("storing %d messages failed", len(run))
                error, reason = "internal", "the server could not store this message: retry"
            for _ in run:
                give_back(chat, session, self.address)
        else:
            return [
                _frame("ack", client_id=draft.client_id, id=s.event.id)
                for draft, s in zip(run, stored, strict=True)
                if draft.client_id is not None
            ]
        return [
            _frame("error", error=error, reason=reason, client_id=draft.client_id) for draft in run
        ]

    def _reply(self, reply: str) -> None:
        self._write(ws_frame(reply.encode()))

    def _write(self, frame: bytes) -> None:
        """An answer (ack, error frame, pong) to the client, unless the socket is closing.

        A client that keeps sending but does not read would have its answers pile up
        here: past the bound on unsent bytes it is cut off, as a slow subscriber is.
        """
        if not self._lost and self.ws.send(frame):
            self._flush()

    def _flush(self) -> None:
        """Write what the protocol and the answers queued, within the bound on unsent
        bytes: a client that keeps sending (pings, messages) but does not read would
        have its answers pile up; past max_unsent it is cut off instead."""
        ws, transport = self.ws, self.transport
        data = ws.data_to_send()
        if not data or self._lost or transport.is_closing():
            return
        if (
            not ws.close_sent
            and transport.get_write_buffer_size() + len(data) > self.chat.settings.max_unsent
        ):
            log.info("websocket cut off: its answers are not read")
            ws.close(CLOSE_TOO_SLOW, "too slow: read what you are sent")
            self._closing()
            data = ws.data_to_send()
        transport.write(data)

    # --- closing ----------------------------------------------------------------------

    def _close(self, code: int, reason: str) -> None:
        """Send a close frame (once); the client answers with its own and we hang up."""
        if self._lost or not self.ws.close(code, reason):
            return
        self._closing()
        self._flush()

    def _closing(self) -> None:
        """The close frame is queued: no event may follow it, and the client has
        CLOSE_TIMEOUT seconds to answer."""
        for sub in self.subs.values():
            sub.set_sink(None)
        self._close_timer = asyncio.get_running_loop().call_later(
            CLOSE_TIMEOUT, self.transport.abort
        )

    async def close(
        self, code: int = CLOSE_NORMAL, message: bytes = b"", within: float = CLOSE_TIMEOUT
    ) -> None:
        """Close with `code`; wait `within` seconds for the client's answer, then hang up.

        Returns once the socket is done (gone, what it said stored, its presence ended),
        or after twice `within` at most.
        """
        self._close(code, message.decode(errors="replace"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ended), within)
            return
        self.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ended), within)

    def tick(self) -> None:
        """The heartbeat: ping; drop a socket that said nothing since the last ping."""
        if self._lost or self.ws.close_sent:
            return
        said = self._said
        # a socket not read while what it said is stored cannot be heard: not its fault
        if not self.ws.ping(excused=said is not None and len(said) >= _MAX_WAITING):
            log.info("websocket dropped: no answer to a ping")
            self.transport.abort()
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.resume_writing()
        for sub in self.subs.values():
            sub.set_sink(None)
            sub.on_ready(None)
            sub.close()
        if self._saying is None:
            self._end()
        # else: what it said is still being stored; _store_said() ends it after

    def _end(self) -> None:
        """Gone and everything it said stored: its presence ends (after its messages)."""
        if self._opening or self._ended.done():
            # _open() ends it once it knows whether it was let in
            return
        if not self._opened:
            self._finished()
            return
        _keep(asyncio.get_running_loop().create_task(self._leave()))

    async def _leave(self) -> None:
        try:
            await disconnect_rooms(self.chat, self.conns)
        finally:
            self.chat.connections["websocket"] -= 1
            self._finished()

    def _finished(self) -> None:
        self.ticket.release()
        self.chat.sockets.discard(self)
        if not self._ended.done():
            self._ended.set_result(None)


async def heartbeat(chat: Chat, every: float) -> None:
    """Ping every open WebSocket each `every` seconds; drop those that stopped answering."""
    while True:
        await asyncio.sleep(every)
        for sock in list(chat.sockets):
            if isinstance(sock, _Socket):
                try:
                    sock.tick()
                except Exception:
                    log.exception("websocket heartbeat failed for one socket")
