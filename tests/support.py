"""Helpers for tests that talk to a real server over real loopback sockets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from chatroom.app import create_app
from chatroom.broker import Backend, Broker
from chatroom.config import Settings
from chatroom.web.server import GuardedRunner, listen
from chatroom.web.state import Chat, chat_key
from tests.redis_server import free_port

__all__ = ["SECRET", "UNLIMITED", "Server", "login", "new_client", "present", "start_server"]

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
    backend_url: str = "memory://", backend: Backend | None = None, **overrides: Any
) -> Server:
    """Serve the app on 127.0.0.1 on a free port."""
    settings = Settings(backend=backend_url, secret=SECRET, port=0, **overrides)
    app = create_app(settings, backend=backend)
    runner = GuardedRunner(app, settings, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    _, port = await listen(runner, "127.0.0.1", 0)
    return Server(f"http://127.0.0.1:{port}", app, runner, port)


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


_CSRF = re.compile(r'data-csrf="([^"]+)"')
_LAST = re.compile(r'data-last-id="([^"]*)"')


@dataclass
class Login:
    csrf: str
    last_id: str
    page: str


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


async def login(
    client: aiohttp.ClientSession,
    server: HasUrl,
    user: str,
    room: str = "lobby",
    demo: str = "longpolling",
) -> Login:
    """Claim a nickname through /demo like a browser; return the room page's CSRF token."""
    async with client.get(
        f"{server.url}/demo", params={"user": user, "room": room, "demo": demo}
    ) as response:
        page = await response.text()
        assert response.status == 200, page
    csrf = _CSRF.search(page)
    last = _LAST.search(page)
    assert csrf, page
    assert last, page
    return Login(csrf.group(1), last.group(1), page)


# --- helpers for the transport and web integration tests (appended) --------------

import asyncio  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from html.parser import HTMLParser  # noqa: E402
from pathlib import Path  # noqa: E402

import orjson  # noqa: E402
from yarl import URL  # noqa: E402

from chatroom.core.websocket import OP_TEXT  # noqa: E402
from chatroom.web.security import COOKIE  # noqa: E402

__all__ += [
    "RawWebSocket",
    "SSEEvent",
    "SSEStream",
    "Thread",
    "client_frame",
    "cookie_of",
    "frame_header",
    "free_port",
    "history",
    "poll",
    "publish",
    "say_lp",
    "thread_messages",
    "ws_json",
    "ws_until",
]


def cookie_of(client: aiohttp.ClientSession, server: Server) -> str:
    """The signed session cookie the client holds for this server."""
    morsel = client.cookie_jar.filter_cookies(URL(server.url)).get(COOKIE)
    assert morsel is not None, "log in first"
    return morsel.value


async def publish(
    server: Server, room: str, texts: list[str], user: str = "bot", session: str = "bot-sid"
) -> list[str]:
    """Store messages straight through the broker (no rate limit); return their ids.

    The speaker is a member of the room only while it speaks: it enters and leaves
    without a join or a leave event (see present()), and is nobody's presence after.
    """
    await present(server.broker, room, user, session)
    ids = []
    try:
        for text in texts:
            stored = await server.broker.say(room, user, session, text)
            ids.append(stored.event.id)
    finally:
        await server.broker.backend.presence.leave(room, user, session)
    return ids


async def history(
    client: aiohttp.ClientSession, server: Server, room: str = "lobby", limit: int = 500
) -> list[dict[str, Any]]:
    async with client.get(
        f"{server.url}/api/rooms/{room}/history", params={"limit": str(limit)}
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    events: list[dict[str, Any]] = body["events"]
    return events


async def poll(
    client: aiohttp.ClientSession,
    server: Server,
    room: str = "lobby",
    last: str | None = None,
) -> list[dict[str, Any]]:
    params = {"room": room}
    if last is not None:
        params["lastReceived"] = last
    async with client.get(f"{server.url}/longpolling/room/messages", params=params) as response:
        assert response.status == 200, await response.text()
        events: list[dict[str, Any]] = await response.json()
    return events


async def say_lp(
    client: aiohttp.ClientSession,
    server: Server,
    csrf: str,
    text: str,
    room: str = "lobby",
    **fields: Any,
) -> dict[str, Any]:
    """Say through the long-poll POST (JSON); assert it was stored; return the event."""
    async with client.post(
        f"{server.url}/longpolling/room/messages",
        params={"room": room},
        json={"message": text, "csrf": csrf, **fields},
    ) as response:
        assert response.status == 200, await response.text()
        event: dict[str, Any] = await response.json()
    return event


def ws_json(msg: aiohttp.WSMessage) -> dict[str, Any]:
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = orjson.loads(msg.data)
    return data


async def ws_until(
    ws: aiohttp.ClientWebSocketResponse,
    done: Any,
    within: float = 5.0,
) -> list[dict[str, Any]]:
    """Receive JSON frames until done(frames_so_far) is true; return them all."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while not done(frames):
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"connection ended: {msg} code {ws.close_code}")
            frames.append(ws_json(msg))
    return frames


@dataclass
class SSEEvent:
    id: str | None
    event: str | None
    data: str
    comments: list[str]

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.data)
        return data


class SSEStream:
    """Parses a text/event-stream response block by block."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        # comment lines seen in blocks that carried no data
        self.comments: list[str] = []
        self.retry: int | None = None

    async def next(self, within: float = 5.0) -> SSEEvent | None:
        """The next block with data; None at the end of the stream."""
        async with asyncio.timeout(within):
            while True:
                block = await self._block()
                if block is None:
                    return None
                if block.data or block.event:
                    return block
                self.comments.extend(block.comments)

    async def _block(self) -> SSEEvent | None:
        event = SSEEvent(None, None, "", [])
        data: list[str] = []
        seen = False
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return event if seen else None
            line = raw.decode().rstrip("\n")
            if line == "":
                if seen:
                    event.data = "\n".join(data)
                    return event
                continue
            seen = True
            if line.startswith(":"):
                event.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event.id = value
            elif name == "data":
                data.append(value)
            elif name == "event":
                event.event = value
            elif name == "retry":
                self.retry = int(value)


class Thread(HTMLParser):
    """Collects (id, user, text) of every `#thread .message` item of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[str, str, str]] = []
        self._in_thread = False
        self._item: dict[str, str] | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = (attr.get("class") or "").split()
        if tag == "ol" and attr.get("id") == "thread":
            self._in_thread = True
        elif self._in_thread and tag == "li" and "message" in classes:
            self._item = {"id": attr.get("data-id") or "", "user": "", "text": ""}
        elif self._item is not None and tag == "span" and classes:
            self._field = classes[0] if classes[0] in ("user", "text") else None

    def handle_endtag(self, tag: str) -> None:
        if tag == "ol" and self._in_thread:
            self._in_thread = False
        elif tag == "span":
            self._field = None
        elif tag == "li" and self._item is not None:
            item = self._item
            self.messages.append((item["id"], item["user"], item["text"]))
            self._item = None

    def handle_data(self, data: str) -> None:
        if self._item is not None and self._field is not None:
            self._item[self._field] += data


def thread_messages(page: str) -> list[tuple[str, str, str]]:
    parser = Thread()
    parser.feed(page)
    parser.close()
    return parser.messages


# --- WebSocket frames as a client sends them ----------------------------------------


def frame_header(
    opcode: int,
    length: int,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    form: int | None = None,
) -> bytes:
    """A frame's first bytes up to (not including) the mask key.

    `form` forces the length field: 126 (16 bits), 127 (64 bits) or None (the shortest).
    """
    if form is None:
        form = length if length < 126 else 126 if length < 1 << 16 else 127
    b0 = (0x80 if fin else 0) | rsv | opcode
    b1 = (0x80 if masked else 0) | form
    if form == 126:
        return bytes((b0, b1)) + length.to_bytes(2, "big")
    if form == 127:
        return bytes((b0, b1)) + length.to_bytes(8, "big")
    assert form == length
    return bytes((b0, b1))


def client_frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask: bytes | None = None,
    form: int | None = None,
) -> bytes:
    """One frame as a client sends it: masked with a random key unless told otherwise."""
    head = frame_header(opcode, len(payload), fin=fin, rsv=rsv, masked=masked, form=form)
    if not masked:
        return head + payload
    key = os.urandom(4) if mask is None else mask
    assert len(key) == 4
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A WebSocket client written by hand, to send what a polite client never would."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, head: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.head = head

    @classmethod
    async def connect(
        cls,
        server: Server,
        path: str,
        cookie: str | None,
        *,
        rcvbuf: int | None = None,
        origin: str | None = None,
    ) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # set before connect so the TCP window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if cookie is not None:
            lines.append(f"Cookie: {COOKIE}={cookie}")
        if origin is not None:
            lines.append(f"Origin: {origin}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status = int(head.split(" ", 2)[1])
        return cls(reader, writer, status, head)

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """Write one masked frame, as the protocol requires of a client."""
        self.writer.write(self.frame(opcode, payload, fin=fin))

    @staticmethod
    def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
        """One masked client frame, as bytes (to send several in one write)."""
        return client_frame(payload, opcode, fin=fin)

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server (never masked)."""
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(size)

    async def read_until_close(
        self, within: float = 5.0
    ) -> tuple[list[bytes], int | None, str]:
        """Text payloads up to the close frame, then (texts, close code, close reason)."""
        texts: list[bytes] = []
        async with asyncio.timeout(within):
            while True:
                try:
                    opcode, payload = await self.read_frame()
                except asyncio.IncompleteReadError:
                    return texts, None, ""
                if opcode == 0x1:
                    texts.append(payload)
                elif opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    return texts, code, payload[2:].decode(errors="replace")

    @property
    def transport(self) -> asyncio.Transport:
        transport = self.writer.transport
        assert isinstance(transport, asyncio.Transport)
        return transport

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


__all__ += ["eventually", "open_ws", "serving"]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float = 5.0, step: float = 0.01
) -> None:
    """Wait until check() (sync or async) is true; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within} s: {check}")
        await asyncio.sleep(step)


@asynccontextmanager
async def serving(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    """start_server over SQLite in tmp_path with Settings overrides; stopped on exit."""
    srv = await start_server(f"sqlite:///{tmp_path / 'chat.db'}", **overrides)
    try:
        yield srv
    finally:
        await srv.stop()


def open_ws(
    client: aiohttp.ClientSession,
    server: Server,
    room: str = "lobby",
    last: str | None = None,
    **kwargs: Any,
) -> Any:
    """client.ws_connect to the room's socket (use with `async with`)."""
    params = {"room": room}
    if last is not None:
        params["lastReceived"] = last
    return client.ws_connect(
        f"{server.ws_url}/websocket/room/socket", params=params, **kwargs
    )


async def press_leave(
    client: aiohttp.ClientSession,
    server: HasUrl,
    csrf: str,
    technique: str = "longpolling",
    room: str = "lobby",
) -> str:
    """Press the room page's Leave button; assert the 303 and return where it leads."""
    async with client.post(
        f"{server.url}/{technique}/room/leave",
        params={"room": room},
        data={"csrf": csrf},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, await response.text()
        return response.headers["Location"]
