"""The floor: a raw asyncio Protocol that writes one pre-encoded frame per client.

It parses the HTTP upgrade and the clients' (masked) frames itself, answers ping and
close, and broadcasts each text message by building the server frame once and calling
transport.write(frame) for every connected client: no library, no per-client encoding,
no queue. Run as `python -m bench.peers.floor --port P`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

from bench.peers import HOST, run, wait_for_sigterm

__all__ = ["FloorProtocol", "main", "server_frame", "unmask"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 16 * 1024
_MAX_MESSAGE = 1 << 20


def server_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, unmasked server-to-client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def _close_frame(code: int) -> bytes:
    return server_frame(struct.pack("!H", code), opcode=0x8)


class FloorProtocol(asyncio.Protocol):
    def __init__(self, clients: set[FloorProtocol]) -> None:
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        # a fragmented message being put together: (opcode, parts)
        self.fragments: tuple[int, list[bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but acts as one
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.clients.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open and not self._handshake():
            return
        self._frames()

    def _fail(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.close()
        self.buf.clear()

    def _handshake(self) -> bool:
        """Answer the HTTP upgrade; False until the request head has all arrived."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                self._fail(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
            return False
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        headers: dict[bytes, bytes] = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        if not head.startswith(b"GET ") or key is None or (
            headers.get(b"upgrade", b"").lower() != b"websocket"
        ):
            self._fail(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return False
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.open = True
        self.clients.add(self)
        return True

    def _frames(self) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b1, b2 = buf[pos], buf[pos + 1]
            if not b2 & 0x80:  # clients must mask
                self._fail(_close_frame(1002))
                return
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
            if length > _MAX_MESSAGE:
                self._fail(_close_frame(1009))
                return
            if n - pos < head + 4 + length:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            payload = unmask(mask, bytes(buf[pos + head + 4 : pos + head + 4 + length]))
            pos += head + 4 + length
            if not self._frame(b1 & 0x80, b1 & 0x0F, payload):
                return
        del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> bool:
        """Act on one frame; False once the connection is closing."""
        assert self.transport is not None
        if opcode == 0x8:  # close: echo the code, then hang up
            self._fail(server_frame(payload[:2], opcode=0x8))
            return False
        if opcode == 0x9:
            self.transport.write(server_frame(payload, opcode=0xA))
            return True
        if opcode == 0xA:
            return True
        if opcode in (0x1, 0x2):
            if fin:
                if opcode == 0x1:
                    self._broadcast(payload)
                return True
            self.fragments = (opcode, [payload])
            return True
        if opcode == 0x0 and self.fragments is not None:
            first, parts = self.fragments
            parts.append(payload)
            if sum(map(len, parts)) > _MAX_MESSAGE:
                self._fail(_close_frame(1009))
                return False
            if fin:
                self.fragments = None
                if first == 0x1:
                    self._broadcast(b"".join(parts))
            return True
        self._fail(_close_frame(1002))
        return False

    def _broadcast(self, payload: bytes) -> None:
        frame = server_frame(payload)
        for client in self.clients:
            transport = client.transport
            if transport is not None and not transport.is_closing():
                transport.write(frame)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    clients: set[FloorProtocol] = set()
    server = await loop.create_server(lambda: FloorProtocol(clients), HOST, port, backlog=1024)
    await wait_for_sigterm()
    server.close()
    going_away = _close_frame(1001)
    for client in list(clients):
        if client.transport is not None:
            client.transport.write(going_away)
            client.transport.close()
    await asyncio.wait_for(server.wait_closed(), 5)


def main() -> None:
    run(serve, "raw asyncio WebSocket broadcast: one pre-encoded frame per client")


if __name__ == "__main__":
    main()
