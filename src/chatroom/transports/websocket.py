"""WebSocket: history (or events after lastReceived) then live, one JSON text frame each.

Each text frame the client sends is one message: {"text": ..., "client_id": ...} or a
bare JSON string. Bad frames get an error frame and the connection stays; binary
frames close with 1003, invalid UTF-8 with 1007, oversized messages with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from chatroom.broker import BackendUnavailable, Draft, SlowConsumer, Subscription
from chatroom.core.events import read_cursor
from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.core.validation import InvalidInput
from chatroom.web.pages import new_conn_id
from chatroom.web.security import Session, same_origin
from chatroom.web.state import Chat, chat_key, json_error, room_of

__all__ = ["CLOSE_LEFT", "CLOSE_NICKNAME_TAKEN", "CLOSE_TOO_SLOW", "routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

# Application close codes (4000-4999 are ours to define).
CLOSE_LEFT = 4000
CLOSE_TOO_SLOW = 4008
CLOSE_NICKNAME_TAKEN = 4009


# aiohttp closes on a bad incoming frame itself, with a bare code: give each a reason.
_REASONS: dict[int, bytes] = {
    WSCloseCode.INVALID_TEXT: b"text frames must be valid UTF-8",
    WSCloseCode.PROTOCOL_ERROR: b"WebSocket protocol error",
}


class _Socket(web.WebSocketResponse):
    """A WebSocketResponse whose close frames always carry a readable reason."""

    # the largest message accepted, named in the 1009 reason
    max_bytes = 0
    # the subscription whose fan-out writes to this socket directly
    sub: Subscription | None = None

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if self.sub is not None:
            # no event frame may follow the close frame
            self.sub.set_sink(None)
        if not message and code == WSCloseCode.MESSAGE_TOO_BIG:
            message = f"message too big: at most {self.max_bytes} bytes".encode()
        return await super().close(
            code=code, message=message or _REASONS.get(code, b""), drain=drain
        )


def _reason(exc: Exception) -> bytes:
    """A close reason: at most 123 bytes of UTF-8."""
    return str(exc).encode()[:120]


def _frame(kind: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


@routes.get("/websocket/room/socket")
async def socket(request: web.Request) -> web.StreamResponse:
    chat = request.app[chat_key]
    room = room_of(request)
    if not same_origin(request, chat.settings.allowed_origins):
        return json_error(403, "bad_origin", "WebSocket from another origin refused")
    session = chat.require_session(request)
    cursor = read_cursor(request.query.get("lastReceived"))

    ws = _Socket(
        heartbeat=20.0,
        max_msg_size=chat.settings.max_body,
        # no per-socket deflate: every subscriber shares one encoded frame
        compress=False,
    )
    ws.max_bytes = chat.settings.max_body
    await ws.prepare(request)
    conn = new_conn_id()
    try:
        await chat.broker.connect(room, session.user, session.sid, conn)
    except NicknameTaken as exc:
        await ws.close(code=CLOSE_NICKNAME_TAKEN, message=_reason(exc))
        return ws
    except LeftRoom as exc:
        await ws.close(code=CLOSE_LEFT, message=_reason(exc))
        return ws
    except BackendUnavailable as exc:
        chat.problems.warning("backend", "websocket refused, backend unavailable: %s", exc)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"backend unavailable: retry")
        return ws
    chat.sockets.add(ws)
    chat.connections["websocket"] += 1
    try:
        async with chat.broker.subscribe(room, cursor, session=session.sid) as sub:
            transport = request.transport
            if transport is not None and not ws.closed:
                ws.sub = sub
                sub.set_sink(transport, "ws")
            sender = asyncio.create_task(_send(ws, sub, chat))
            try:
                await _receive(ws, chat, room, session)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
    finally:
        chat.connections["websocket"] -= 1
        chat.sockets.discard(ws)
        await chat.broker.disconnect(conn)
        if not ws.closed:
            await ws.close()
    return ws


async def _send(ws: web.WebSocketResponse, sub: Subscription, chat: Chat) -> None:
    try:
        async for batch in sub:
            for item in batch:
                await ws.send_frame(item.data, WSMsgType.TEXT)
    except SlowConsumer as exc:
        await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow: resume from your last id")
        log.info("websocket cut off: %s", exc)
        return
    except ConnectionError:
        # reset, or lost while a write waited for the client to read: it is gone
        return
    except BackendUnavailable as exc:
        # Could not read history: the client retries later from its cursor.
        chat.problems.warning("backend", "websocket history read failed: %s", exc)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"backend unavailable: retry")
        return
    # The subscription ended: the server is shutting down, or the user left.
    if chat.broker.closing:
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
    else:
        await ws.close(code=CLOSE_LEFT, message=b"you left the room")


# Messages one socket may have waiting to be stored (past this, its frames wait in TCP),
# and how many are stored together at most.
_MAX_WAITING = 256
_RUN = 64


class _Sayer:
    """Stores what one socket says, in order, and answers each message in order.

    While one run of messages is being committed, the next gathers: a burst from one
    client becomes a few commits, and each subscriber gets it in a few writes.
    """

    def __init__(self, ws: web.WebSocketResponse, chat: Chat, room: str, session: Session):
        self._ws = ws
        self._chat = chat
        self._room = room
        self._session = session
        # a Draft to store, or a reply (an error frame) to send in its turn
        self._items: deque[Draft | str] = deque()
        self._more = asyncio.Event()
        self._room_for_more = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="chatroom-ws-say")

    async def put(self, item: Draft | str) -> None:
        while len(self._items) >= _MAX_WAITING:
            self._room_for_more.clear()
            await self._room_for_more.wait()
        self._items.append(item)
        self._more.set()

    async def close(self, within: float = 10.0) -> None:
        """Store (and answer, while the socket is open) what was said, then stop."""
        self._closing = True
        self._more.set()
        _, pending = await asyncio.wait({self._task}, timeout=within)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        items = self._items
        while True:
            if not items:
                if self._closing:
                    return
                self._more.clear()
                await self._more.wait()
                continue
            head = items[0]
            if isinstance(head, str):
                items.popleft()
                await self._send(head)
            else:
                run: list[Draft] = []
                while items and len(run) < _RUN and isinstance(items[0], Draft):
                    run.append(items.popleft())  # type: ignore[arg-type]
                self._room_for_more.set()
                for reply in await self._store(run):
                    await self._send(reply)
            self._room_for_more.set()

    async def _store(self, run: list[Draft]) -> list[str]:
        chat, session = self._chat, self._session
        try:
            stored = await chat.broker.say_many(self._room, session.user, session.sid, run)
        except NicknameTaken as exc:
            error, reason = "nickname_taken", str(exc)
        except LeftRoom as exc:
            error, reason = "left", str(exc)
        except BackendUnavailable as exc:
            error, reason = "unavailable", str(exc)
        except Exception:
            # a bug, not the client's doing: answer every message, keep the socket
            log.exception("storing %d messages failed", len(run))
            error, reason = "internal", "the server could not store this message: retry"
        else:
            return [
                _frame("ack", client_id=draft.client_id, id=s.event.id)
                for draft, s in zip(run, stored, strict=True)
                if draft.client_id is not None
            ]
        return [
            _frame("error", error=error, reason=reason, client_id=draft.client_id)
            for draft in run
        ]

    async def _send(self, reply: str) -> None:
        if self._ws.closed:
            return
        with contextlib.suppress(ConnectionError):
            await self._ws.send_str(reply)


async def _receive(ws: web.WebSocketResponse, chat: Chat, room: str, session: Session) -> None:
    # made on the first message: a socket that only listens holds none
    sayer: _Sayer | None = None
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if sayer is None:
                    sayer = _Sayer(ws, chat, room, session)
                await sayer.put(_parse(chat, session, msg.data))
            elif msg.type == WSMsgType.BINARY:
                await ws.close(
                    code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames are not accepted"
                )
                return
            elif msg.type == WSMsgType.ERROR:
                # aiohttp has closed the socket already with the code that fits
                # (1007 invalid UTF-8, 1009 too big, 1002 protocol error).
                return
    finally:
        if sayer is not None:
            await sayer.close()


def _parse(chat: Chat, session: Session, raw: str) -> Draft | str:
    """One frame the client sent: the message to store, or the error frame to answer."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _frame(
            "error",
            error="bad_json",
            reason='each frame must be JSON: {"text": "...", "client_id": "..."} or "text"',
        )
    client_id: object = None
    if isinstance(payload, str):
        text: object = payload
    elif isinstance(payload, dict):
        text = payload.get("text")
        client_id = payload.get("client_id")
    else:
        return _frame(
            "error", error="bad_frame", reason='send {"text": "...", "client_id": "..."}'
        )
    cid = client_id if isinstance(client_id, str) else None
    wait = chat.limiter.check(session.sid)
    if wait > 0:
        return _frame(
            "error",
            error="rate_limited",
            reason=f"too many messages: wait {wait:.1f} s and send again",
            client_id=cid,
            retry_after=round(wait, 2),
        )
    try:
        return chat.broker.draft(session.user, session.sid, text, client_id)
    except InvalidInput as exc:
        return _frame("error", error="invalid", reason=exc.reason, client_id=cid)
