"""Real WebSocket clients against the real server: the `websockets` library, aiohttp's
client, and Node's `ws` (Chromium has the browser tests).

Each opens the room's socket as a browser would (the session cookie, our Origin),
reads the history, says a JSON object and a bare JSON string and gets both events back
exactly as stored, pings and gets its pong, stays up through the server's heartbeat
pings, and closes: by itself (1000 echoed, the server hangs up), or by the server
(Leave pressed elsewhere: 4000; a binary frame: 1003) with the client answering so the
server is done at once, not after its close timeout.

The Node client is tests/transports/ws_interop_client.js, using the `ws` package that
`chatroom bench` installs (npm ci) in bench/peers/node_ws.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import sys
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from bench.compare import NODE_WS_DIR, node_ws_setup
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.typing import Origin

from chatroom.web.security import COOKIE
from tests.support import (
    Server,
    cookie_of,
    eventually,
    login,
    new_client,
    press_leave,
    publish,
    serving,
)

CLIENTS = ["websockets", "aiohttp", "node-ws"]
NODE_CLIENT = Path(__file__).resolve().parent / "ws_interop_client.js"

# JSON escapes, several scripts, an emoji (4 bytes of UTF-8), markup that must stay text
TEXT_OBJECT = "naïve “quotes” \\ / 日本語 🎉 <b>&amp;</b>"
# (and Hebrew, right to left)
TEXT_STRING = "a bare JSON string: ça va ? Ωμέγα\t\u05ea\u05d5\u05d3\u05d4"


class Closed(Exception):
    """The connection closed while a frame was awaited."""


class Client:
    """One client library's socket, seen the same way whichever library it is."""

    def __init__(self) -> None:
        # what arrived while something else was awaited
        self._pending: deque[tuple[str, Any]] = deque()
        self.pings_seen = 0

    async def _receive(self) -> tuple[str, Any]:
        """The next event: ("text", payload bytes), ("pong", payload), ("ping", payload)
        or ("close", (code, reason))."""
        raise NotImplementedError

    async def _next(self, kind: str) -> Any:
        for i, (k, value) in enumerate(self._pending):
            if k == kind:
                del self._pending[i]
                return value
        while True:
            k, value = await self._receive()
            if k == "ping":
                self.pings_seen += 1
            elif k == kind:
                return value
            elif k == "close" and kind != "close":
                self._pending.append((k, value))
                raise Closed(value)
            else:
                self._pending.append((k, value))

    async def recv(self) -> bytes:
        """The payload of the next text frame, as it came."""
        payload: bytes = await self._next("text")
        return payload

    async def frames(self, done: Any, within: float = 5.0) -> list[bytes]:
        """Text frames until done(frames so far)."""
        got: list[bytes] = []
        async with asyncio.timeout(within):
            while not done(got):
                got.append(await self.recv())
        return got

    async def send_text(self, text: str) -> None:
        raise NotImplementedError

    async def send_binary(self, data: bytes) -> None:
        raise NotImplementedError

    async def ping(self, data: bytes) -> bytes:
        """Ping; the payload of the pong that answers."""
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> int | None:
        """Start the close handshake; the code of the server's answering close frame."""
        raise NotImplementedError

    async def closed(self) -> tuple[int | None, str]:
        """Wait for the server to close: the code and reason it sent (the client answers)."""
        async with asyncio.timeout(5.0):
            code, reason = await self._next("close")
        return code, reason

    async def release(self) -> None:
        raise NotImplementedError


class WebsocketsClient(Client):
    def __init__(self, ws: ClientConnection) -> None:
        super().__init__()
        self.ws = ws

    async def _receive(self) -> tuple[str, Any]:
        try:
            return "text", await self.ws.recv(decode=False)
        except ConnectionClosed:
            close = self.ws.protocol.close_rcvd
            return "close", (
                None if close is None else close.code,
                "" if close is None else close.reason,
            )

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def send_binary(self, data: bytes) -> None:
        await self.ws.send(data)

    async def ping(self, data: bytes) -> bytes:
        # websockets resolves the waiter only for a pong that carries the ping's payload
        waiter = await self.ws.ping(data)
        async with asyncio.timeout(5.0):
            await waiter
        return data

    async def close(self, code: int, reason: str) -> int | None:
        await self.ws.close(code, reason)
        protocol = self.ws.protocol
        assert protocol.state is State.CLOSED
        # it sent its close first, then read the server's
        assert protocol.close_rcvd_then_sent is False
        return None if protocol.close_rcvd is None else protocol.close_rcvd.code

    async def closed(self) -> tuple[int | None, str]:
        answer = await super().closed()
        await self.ws.wait_closed()
        # the server's close came first; websockets answered it
        assert self.ws.protocol.close_rcvd_then_sent is True
        return answer

    async def release(self) -> None:
        await self.ws.close()


class AiohttpClient(Client):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__()
        self.ws = ws

    async def _receive(self) -> tuple[str, Any]:
        msg = await self.ws.receive()
        if msg.type == WSMsgType.TEXT:
            # aiohttp hands text over decoded; valid UTF-8 encodes back to the same bytes
            return "text", msg.data.encode()
        if msg.type == WSMsgType.PONG:
            return "pong", bytes(msg.data)
        if msg.type == WSMsgType.CLOSE:
            return "close", (msg.data, str(msg.extra or ""))
        if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
            return "close", (self.ws.close_code, "")
        raise AssertionError(f"unexpected {msg}")

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send_binary(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def ping(self, data: bytes) -> bytes:
        # (opened with autoping=False, so pongs are handed to us)
        await self.ws.ping(data)
        async with asyncio.timeout(5.0):
            pong: bytes = await self._next("pong")
        return pong

    async def close(self, code: int, reason: str) -> int | None:
        assert await self.ws.close(code=code, message=reason.encode())
        return self.ws.close_code

    async def release(self) -> None:
        await self.ws.close()


class NodeClient(Client):
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        super().__init__()
        self.process = process

    async def _event(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise AssertionError("the Node client ended without a close event")
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "error":
            raise AssertionError(f"Node ws: {event['message']}")
        return event

    async def opened(self) -> dict[str, Any]:
        async with asyncio.timeout(10.0):
            event = await self._event()
        assert event["event"] == "open", event
        return event

    async def _receive(self) -> tuple[str, Any]:
        event = await self._event()
        kind = event["event"]
        if kind == "close":
            return "close", (event["code"], event["reason"])
        return kind, base64.b64decode(event["data"])

    def _command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")

    async def send_text(self, text: str) -> None:
        self._command(op="text", data=text)

    async def send_binary(self, data: bytes) -> None:
        self._command(op="binary", data=base64.b64encode(data).decode())

    async def ping(self, data: bytes) -> bytes:
        self._command(op="ping", data=base64.b64encode(data).decode())
        async with asyncio.timeout(5.0):
            pong: bytes = await self._next("pong")
        return pong

    async def close(self, code: int, reason: str) -> int | None:
        self._command(op="close", code=code, reason=reason)
        code_back, _ = await self.closed()
        return code_back

    async def closed(self) -> tuple[int | None, str]:
        answer = await super().closed()
        # the client ends once the server has closed the TCP connection
        async with asyncio.timeout(5.0):
            assert await self.process.wait() == 0
        return answer

    async def release(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture(scope="module")
def node_ws() -> Path:
    """The `ws` package the bench installs (npm ci, once)."""
    if shutil.which("node") is None:
        pytest.skip("no `node` on PATH")
    node_ws_setup()
    return NODE_WS_DIR


@asynccontextmanager
async def opened(
    kind: str,
    server: Server,
    http: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
    *,
    autoping: bool = True,
) -> AsyncIterator[Client]:
    """A socket to the lobby from library `kind`, with the session cookie and our Origin."""
    url = f"{server.ws_url}/websocket/room/socket?room=lobby"
    cookie = f"{COOKIE}={cookie_of(http, server)}"
    client: Client
    if kind == "websockets":
        client = WebsocketsClient(
            await connect(url, origin=Origin(server.url), additional_headers={"Cookie": cookie})
        )
    elif kind == "aiohttp":
        # the cookie comes from the session's jar, as for any request it makes
        ws = await http.ws_connect(url, origin=server.url, autoping=autoping)
        client = AiohttpClient(ws)
    else:
        package: Path = request.getfixturevalue("node_ws")
        process = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            str(NODE_CLIENT),
            url,
            server.url,
            cookie,
            str(package),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=sys.stderr,
        )
        node = NodeClient(process)
        try:
            opening = await node.opened()
        except BaseException:
            await node.release()
            raise
        # it offered permessage-deflate; the server agreed to no extension
        assert opening["extensions"] == ""
        client = node
    try:
        yield client
    finally:
        await client.release()


def event_of(payload: bytes) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(payload)
    return event


async def stored(server: Server) -> dict[str, bytes]:
    """Every event of the lobby as the server encoded it: id -> bytes."""
    return {e.id: e.data for e in await server.broker.history("lobby", None, 100)}


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_conversation_then_a_clean_close_from_the_client(
    kind: str, server: Server, client: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    await publish(server, "lobby", ["one", "two"])
    await login(client, server, "alice", demo="websocket")
    async with opened(kind, server, client, request, autoping=False) as ws:
        # the history: what was said, then alice's join, each frame as stored
        first = await ws.frames(lambda got: len(got) == 3)
        events = await stored(server)
        assert [events[event_of(p)["id"]] for p in first] == first
        assert [event_of(p).get("text") for p in first] == ["one", "two", None]
        assert event_of(first[-1])["type"] == "join"

        await ws.send_text(json.dumps({"text": TEXT_OBJECT, "client_id": f"{kind}-1"}))
        await ws.send_text(json.dumps(TEXT_STRING))
        said = await ws.frames(
            lambda got: sum(event_of(p).get("type") == "message" for p in got) == 2
        )
        acks = [event_of(p) for p in said if event_of(p)["type"] == "ack"]
        mine = [p for p in said if event_of(p)["type"] == "message"]
        events = await stored(server)
        # both came back exactly as the server stored them, in the order they were said
        assert [events[event_of(p)["id"]] for p in mine] == mine
        assert [event_of(p)["text"] for p in mine] == [TEXT_OBJECT, TEXT_STRING]
        assert {event_of(p)["user"] for p in mine} == {"alice"}
        # the object's client_id is acknowledged with its event's id; the string has none
        if len(acks) == 0:
            acks = [event_of(await ws.recv())]
        assert acks == [{"type": "ack", "client_id": f"{kind}-1", "id": event_of(mine[0])["id"]}]

        payload = f"ping from {kind} ✓".encode()
        assert await ws.ping(payload) == payload

        assert await ws.close(1000, "bye") == 1000
    # the server was done with it at once
    await eventually(lambda: not server.chat.sockets, within=2.0)
    assert server.chat.connections["websocket"] == 0


@pytest.mark.parametrize("kind", CLIENTS)
async def test_the_client_answers_the_servers_heartbeat(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # a socket that answers nothing is dropped at the second ping: 0.1 s here
    async with serving(tmp_path, ws_heartbeat=0.1) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        async with opened(kind, server, client, request) as ws:
            await ws.frames(lambda got: len(got) == 1)
            # quiet for ten pings: only the library's automatic pongs keep it up
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    raise AssertionError(await ws.recv())
            assert len(server.chat.sockets) == 1
            if kind == "node-ws":
                assert ws.pings_seen >= 5
            await ws.send_text(json.dumps("still here"))
            frames = await ws.frames(lambda got: len(got) == 1)
            assert event_of(frames[0])["text"] == "still here"


@pytest.mark.parametrize("kind", CLIENTS)
async def test_leave_pressed_elsewhere_closes_with_4000(
    kind: str, server: Server, client: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    page = await login(client, server, "alice", demo="websocket")
    async with opened(kind, server, client, request) as ws:
        await ws.frames(lambda got: len(got) == 1)
        # another tab of the same session presses Leave
        await press_leave(client, server, page.csrf, "websocket")
        code, reason = await ws.closed()
        assert code == 4000
        assert reason == "you left the room"
        # the client answered the close: the server hung up without waiting its timeout
        await eventually(lambda: not server.chat.sockets, within=2.0)


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_binary_frame_is_answered_with_close_1003(
    kind: str, server: Server, client: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with opened(kind, server, client, request) as ws:
        await ws.frames(lambda got: len(got) == 1)
        await ws.send_binary(b"\x00\x01binary")
        code, reason = await ws.closed()
        assert code == 1003
        assert reason == "binary frames are not accepted"
        await eventually(lambda: not server.chat.sockets, within=2.0)
    # the room carries on: nothing was stored from it
    events = await stored(server)
    assert [e for e in map(event_of, events.values()) if e["type"] == "message"] == []
