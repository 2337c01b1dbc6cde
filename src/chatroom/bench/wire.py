"""Raw asyncio client protocols for the benchmark: WebSocket, SSE and long polling
(and Socket.IO over WebSocket, for the socket.io peer of `python -m bench --compare`).

No client library: each protocol parses what arrives inline and records, for every
benchmark message, its sequence number and the latency from its intended send time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "MARK",
    "SocketIOClient",
    "Tally",
    "encode_text",
    "mask_frame",
    "open_client",
    "parse_mark",
]

# Every benchmark message's text starts with "bench:<seq>:<intended monotonic ns>:".
MARK = b"bench:"


def encode_text(seq: int, intended_ns: int, size: int) -> str:
    head = f"bench:{seq}:{intended_ns}:"
    return head + "x" * max(0, size - len(head))


def parse_mark(data: bytes, start: int = 0) -> tuple[int, int, int] | None:
    """Find the next mark at or after `start`: (seq, intended_ns, end index)."""
    i = data.find(MARK, start)
    if i < 0:
        return None
    j = data.find(b":", i + 6)
    k = data.find(b":", j + 1)
    if j < 0 or k < 0:
        return None
    return int(data[i + 6 : j]), int(data[j + 1 : k]), k


@dataclass
class Tally:
    """What one client process saw, over all its connections."""

    expected_max: int = 1 << 20
    latencies_us: array[float] = field(default_factory=lambda: array("f"))
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    # per connection: last seq and a bitmap of seqs seen
    last: list[int] = field(default_factory=list)
    seen: list[bytearray] = field(default_factory=list)
    closed: int = 0
    errors: list[str] = field(default_factory=list)

    def new_conn(self) -> int:
        self.last.append(-1)
        self.seen.append(bytearray(self.expected_max // 8 + 1))
        return len(self.last) - 1

    def record(self, conn: int, seq: int, intended_ns: int, now_ns: int) -> None:
        if seq >= self.expected_max:
            return
        bitmap = self.seen[conn]
        byte, bit = seq >> 3, 1 << (seq & 7)
        if bitmap[byte] & bit:
            self.duplicates += 1
            return
        bitmap[byte] |= bit
        if seq < self.last[conn]:
            self.out_of_order += 1
        else:
            self.last[conn] = seq
        self.received += 1
        self.latencies_us.append((now_ns - intended_ns) / 1000.0)

    def missing(self, conn: int, sent: int, limit: int = 20) -> list[int]:
        """The first few seqs below `sent` that connection `conn` never received."""
        bitmap = self.seen[conn]
        out = [s for s in range(sent) if not bitmap[s >> 3] & (1 << (s & 7))]
        return out[:limit]

    def lost(self, sent: int) -> int:
        total = 0
        for bitmap in self.seen:
            got = sum(bin(b).count("1") for b in bitmap[: sent // 8 + 1])
            # bits beyond `sent` cannot be set: the publisher never made them
            total += sent - got
        return total


class _Base(asyncio.Protocol):
    # whether the response head (101/200) makes the client ready, or a later message does
    ready_on_headers = True

    def __init__(self, tally: Tally, ready: asyncio.Future[None]) -> None:
        self.tally = tally
        self.conn = tally.new_conn()
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.headers_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but acts as one
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def _headers(self) -> bool:
        """Consume the HTTP response head; False until it has all arrived."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        status = head.split(b" ", 2)[1] if b" " in head else b"?"
        if status not in (b"101", b"200"):
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"HTTP {status.decode()}: {head[:200]!r}"))
            assert self.transport is not None
            self.transport.close()
            return False
        self.headers_done = True
        self.chunked = b"chunked" in head.lower()
        if self.ready_on_headers and not self.ready.done():
            self.ready.set_result(None)
        return True

    def _scan(self, data: bytes | bytearray) -> None:
        now = time.monotonic_ns()
        pos = 0
        tally = self.tally
        while True:
            found = parse_mark(bytes(data) if isinstance(data, bytearray) else data, pos)
            if found is None:
                return
            seq, intended, pos = found
            tally.record(self.conn, seq, intended, now)


class WebSocketClient(_Base):
    """Reads server frames (unmasked) inline; answers pings; records marks in text frames."""

    def __init__(
        self,
        tally: Tally,
        ready: asyncio.Future[None],
        on_text: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(tally, ready)
        self.on_text = on_text

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.headers_done and not self._headers():
            return
        buf = self.buf
        pos = 0
        n = len(buf)
        texts: list[bytes] = []
        while n - pos >= 2:
            b1, b2 = buf[pos], buf[pos + 1]
            length = b2 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if n - pos < head + length:
                break
            opcode = b1 & 0x0F
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if opcode == 1:
                texts.append(payload)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(mask_frame(payload, opcode=10))
            elif opcode == 8 and self.transport is not None:
                self.transport.close()
        del buf[:pos]
        if texts:
            joined = b"\n".join(texts)
            self._scan(joined)
            if self.on_text is not None:
                for t in texts:
                    self.on_text(t)


class SocketIOClient(WebSocketClient):
    """Socket.IO (Engine.IO 4) over a WebSocket, as a socket.io client joins namespace "/".

    The server opens with "0{...}" (Engine.IO open); the client answers "40" (connect to
    the default namespace) and is ready when "40{...}" comes back ("44{...}" refuses).
    Pings "2" are answered "3". Events "42[...]" carry the marks, which the frame scan of
    WebSocketClient records.
    """

    ready_on_headers = False

    def __init__(self, tally: Tally, ready: asyncio.Future[None]) -> None:
        super().__init__(tally, ready, on_text=self._engineio)

    def _engineio(self, text: bytes) -> None:
        if text.startswith(b"42") or self.transport is None:
            return  # an event: the scan has recorded it
        if text == b"2":
            self.transport.write(mask_frame(b"3"))
        elif text.startswith(b"0{"):
            self.transport.write(mask_frame(b"40"))
        elif text.startswith(b"40"):
            if not self.ready.done():
                self.ready.set_result(None)
        elif text.startswith((b"44", b"1")):
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"socket.io refused: {text[:200]!r}"))
            self.transport.close()


class SSEClient(_Base):
    """Reads a chunked text/event-stream; records marks in data lines."""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.headers_done and not self._headers():
            return
        if not self.chunked:
            self._scan(self.buf)
            # keep a tail in case a mark is split across reads
            cut = self.buf.rfind(b"\n\n")
            if cut >= 0:
                del self.buf[: cut + 2]
            return
        # De-chunk what is complete, scan it, keep the rest.
        out = bytearray()
        buf = self.buf
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(buf[pos:eol]).split(b";")[0] or b"0", 16)
            if len(buf) < eol + 2 + size + 2:
                break
            out += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
        del buf[:pos]
        if out:
            self.pending = getattr(self, "pending", bytearray()) + out
            cut = self.pending.rfind(b"\n\n")
            if cut >= 0:
                self._scan(self.pending[: cut + 2])
                del self.pending[: cut + 2]


def mask_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client-to-server frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        # the mask repeated over exactly n bytes (one whole extra copy overflowed n % 4 == 0)
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big")
    else:
        masked = b""
    return head + mask + masked


def ws_request(host: str, port: int, path: str, cookie: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Cookie: {cookie}\r\n\r\n"
    ).encode()


def get_request(host: str, port: int, path: str, cookie: str, accept: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {accept}\r\n"
        f"Cookie: {cookie}\r\n\r\n"
    ).encode()


async def longpoll_loop(
    host: str, port: int, room: str, cookie: str, tally: Tally, stop: asyncio.Event,
    ready: asyncio.Future[None],
) -> None:
    """One long-polling subscriber: GET, record, repeat with the last id as cursor."""
    import orjson

    conn = tally.new_conn()
    reader, writer = await asyncio.open_connection(host, port)
    cursor = ""
    try:
        while not stop.is_set():
            query = f"/longpolling/room/messages?room={room}"
            if cursor:
                query += f"&lastReceived={cursor}"
            writer.write(get_request(host, port, query, cookie, "application/json"))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"long poll answered {head[:40]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            now = time.monotonic_ns()
            if not ready.done():
                ready.set_result(None)
            for event in orjson.loads(body):
                if event.get("id"):
                    cursor = event["id"]
                text = event.get("text") or ""
                if text.startswith("bench:"):
                    _, seq, intended, _ = text.split(":", 3)
                    tally.record(conn, int(seq), int(intended), now)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        tally.errors.append(str(exc))
        if not ready.done():
            ready.set_exception(exc)
    finally:
        tally.closed += 1
        writer.close()


async def open_client(
    technique: str, host: str, port: int, path: str, cookie: str, tally: Tally
) -> asyncio.Transport:
    """Connect one subscriber and wait until the server accepted it."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    proto: _Base
    if technique == "websocket":
        proto = WebSocketClient(tally, ready)
        request = ws_request(host, port, path, cookie)
    elif technique == "socketio":
        proto = SocketIOClient(tally, ready)
        request = ws_request(host, port, path, cookie)
    elif technique == "sse":
        proto = SSEClient(tally, ready)
        request = get_request(host, port, path, cookie, "text/event-stream")
    else:
        raise ValueError(f"no raw client for {technique!r}")
    transport, _ = await loop.create_connection(lambda: proto, host, port)
    transport.write(request)
    await asyncio.wait_for(ready, 30)
    return transport
