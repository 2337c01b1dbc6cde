"""WebSockets in tests: through aiohttp's client, and byte by byte as a hostile client
sends them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import socket
import struct
from typing import Any, Protocol

import aiohttp
import orjson

from chatroom.core.websocket import OP_TEXT
from chatroom.web.security import COOKIE
from tests.support.server import Server

__all__ = [
    "HasPort",
    "RawWebSocket",
    "client_frame",
    "frame_header",
    "open_ws",
    "ws_json",
    "ws_until",
]

# masks and handshake keys: any will do, so a seeded generator makes runs repeat
_keys = random.Random(6455)


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
    key = _keys.randbytes(4) if mask is None else mask
    assert len(key) == 4
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class HasPort(Protocol):
    """A server on 127.0.0.1 (a test's Server, a cluster's Node)."""

    @property
    def port(self) -> int: ...


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
        server: HasPort,
        path: str,
        cookie: str | None,
        *,
        rcvbuf: int | None = None,
        origin: str | None = None,
        local_addr: str | None = None,
    ) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        loop = asyncio.get_running_loop()
        try:
            if local_addr is not None:
                # another loopback source address (127.0.0.2, ...), as another machine
                sock.bind((local_addr, 0))
            if rcvbuf is not None:
                # set before connect so the TCP window is small from the start
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(_keys.randbytes(16)).decode()
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
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            status = int(head.split(" ", 2)[1])
        except BaseException:
            # refused or gone before the answer's head: nothing to hand back
            writer.close()
            raise
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
