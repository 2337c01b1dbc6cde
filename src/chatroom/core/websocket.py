"""The WebSocket protocol (RFC 6455), server side: handshake key, frames in, frames out.

Pure: bytes in, frames or a ProtocolError out. The transport that owns the socket
decides what to do with them. No extensions are negotiated, so every RSV bit is an
error; client frames must be masked; a message (all its fragments) may be at most
`max_message` bytes, checked from each frame's header before its payload is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameParser",
    "ProtocolError",
    "ServerConnection",
    "accept_key",
    "close_frame",
    "control_frame",
    "parse_close",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Close codes (RFC 6455 section 7.4.1).
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_TEXT = 1007
MESSAGE_TOO_BIG = 1009


class ProtocolError(Exception):
    """The peer broke the protocol: close with `code`, giving `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # what the same feed() decoded before the violation, in order: the client sent
        # it, so it is handled before the connection is failed
        self.frames: list[tuple[int, str | bytes]] = []


def accept_key(key: str) -> str | None:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key; None if the key is not
    the base64 of 16 bytes."""
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 16:
        return None
    return base64.b64encode(hashlib.sha1(key.strip().encode() + _GUID).digest()).decode()


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked control frame (close, ping, pong): at most 125 bytes of payload."""
    if len(payload) > 125:
        raise ValueError("a control frame carries at most 125 bytes")
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame: the code, then the reason cut to fit 123 bytes of whole characters."""
    data = reason.encode()[:123].decode(errors="ignore").encode()
    return control_frame(OP_CLOSE, code.to_bytes(2, "big") + data)


def _valid_close_code(code: int) -> bool:
    # 1004-1006 and 1015 are never sent on the wire; 1016-2999 are unassigned
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code (None when absent) and reason a close frame carries."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "a close frame's code takes two bytes")
    code = int.from_bytes(payload[:2], "big")
    if not _valid_close_code(code):
        raise ProtocolError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_TEXT, "a close reason must be valid UTF-8") from None
    return code, reason


def _unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = int.from_bytes(mask * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1)
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


class FrameParser:
    """Turns the bytes a client sends into whole messages and control frames.

    `feed()` returns, in order, `(OP_TEXT, str)` for each complete text message (its
    fragments joined, checked as UTF-8) and `(opcode, bytes)` for each close, ping or
    pong frame. It raises ProtocolError on the first violation; the parser is then
    spent. Binary messages are refused at their first frame (1003).
    """

    __slots__ = ("_buffer", "_message", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = b""
        # the text message being received in fragments, joined as they come: however
        # many fragments (empty ones too), it holds at most max_message bytes
        self._message: bytearray | None = None

    def feed(self, data: bytes) -> list[tuple[int, str | bytes]]:
        out: list[tuple[int, str | bytes]] = []
        try:
            self._feed(data, out)
        except ProtocolError as exc:
            exc.frames = out
            raise
        return out

    def _feed(self, data: bytes, out: list[tuple[int, str | bytes]]) -> None:
        buf = self._buffer + data if self._buffer else data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise ProtocolError(PROTOCOL_ERROR, "reserved bits set: no extension agreed")
            if not b1 & 0x80:
                raise ProtocolError(PROTOCOL_ERROR, "frames from a client must be masked")
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise ProtocolError(PROTOCOL_ERROR, "frame length out of range")
                head = 10
            self._check(opcode, fin, length)
            start = pos + head + 4
            if end - start < length:
                break
            payload = _unmask(buf[pos + head : start], buf[start : start + length])
            pos = start + length
            if opcode >= OP_CLOSE:
                out.append((opcode, payload))
                continue
            started = self._message
            if not fin:
                if started is None:
                    self._message = bytearray(payload)
                else:
                    started += payload
                continue
            message: bytes | bytearray = payload
            if started is not None:
                started += payload
                message = started
                self._message = None
            try:
                out.append((OP_TEXT, message.decode()))
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_TEXT, "text frames must be valid UTF-8") from None
        self._buffer = buf[pos:]

    def _check(self, opcode: int, fin: int, length: int) -> None:
        """Refuse a frame from its header, before its payload is read or kept."""
        if opcode >= OP_CLOSE:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not fin:
                raise ProtocolError(PROTOCOL_ERROR, "control frames must not be fragmented")
            if length > 125:
                raise ProtocolError(PROTOCOL_ERROR, "control frames carry at most 125 bytes")
            return
        if opcode == OP_BINARY:
            raise ProtocolError(UNSUPPORTED_DATA, "binary frames are not accepted")
        if opcode == OP_TEXT:
            if self._message is not None:
                raise ProtocolError(PROTOCOL_ERROR, "a new message began inside a fragmented one")
        elif opcode == OP_CONTINUATION:
            if self._message is None:
                raise ProtocolError(PROTOCOL_ERROR, "a continuation frame with no message")
        else:
            raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if (0 if self._message is None else len(self._message)) + length > self.max_message:
            raise ProtocolError(
                MESSAGE_TOO_BIG, f"message too big: at most {self.max_message} bytes"
            )


CLOSE_NORMAL = 1000


class ServerConnection:
    """One WebSocket after its opening handshake, server side, with no I/O.

    Feed it what the client sent with `receive_data()`: it returns the text messages to
    handle, in order, and queues what the protocol itself answers (pongs, its half of
    the close handshake). Take the bytes to write with `data_to_send()`. The
    application sends its own frames with `send()`, starts the close handshake with
    `close()`, and beats the heart with `ping()`.

    - `close_sent`: a close frame went out; no frame may follow it.
    - `failed`: the handshake is over, or the client broke the protocol: what it
      sends now is not read.
    - `hang_up`: the close handshake is done; the server closes the TCP connection
      first (RFC 6455, 7.1.1).
    - `half_close`: the client broke the protocol; shut our writing side so it reads
      the close frame, answers, and closes.
    """

    __slots__ = ("_out", "_parser", "close_sent", "failed", "half_close", "hang_up", "heard")

    def __init__(self, max_message: int) -> None:
        self._parser = FrameParser(max_message)
        self._out: list[bytes] = []
        self.close_sent = False
        self.failed = False
        self.hang_up = False
        self.half_close = False
        # something came from the client since the last ping
        self.heard = True

    def receive_data(self, data: bytes) -> list[str]:
        """What the client sent: the text messages in it, to handle in order."""
        texts: list[str] = []
        if self.failed:
            return texts
        self.heard = True
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            # what came before the violation counts, as if it had come in its own read
            self._handle(exc.frames, texts)
            if not self.failed:
                self.failed = True
                self.close(exc.code, exc.reason)
                self.half_close = True
            return texts
        self._handle(frames, texts)
        return texts

    def _handle(self, frames: list[tuple[int, str | bytes]], texts: list[str]) -> None:
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                if not self.close_sent:
                    assert isinstance(payload, str)
                    texts.append(payload)
            elif opcode == OP_PING:
                assert isinstance(payload, bytes)
                self.send(control_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                assert isinstance(payload, bytes)
                self._closed_by_client(payload)
                return
            # a pong only shows the client is there

    def _closed_by_client(self, payload: bytes) -> None:
        self.failed = True
        if not self.close_sent:
            try:
                code, _ = parse_close(payload)
            except ProtocolError as exc:
                self.close(exc.code, exc.reason)
            else:
                # answer with its code, as RFC 6455 suggests; an empty close gets 1000
                self.close(CLOSE_NORMAL if code is None else code, "")
        self.hang_up = True

    def send(self, frame: bytes) -> bool:
        """Queue a frame; False (and nothing queued) once the close frame went out."""
        if self.close_sent:
            return False
        self._out.append(frame)
        return True

    def close(self, code: int, reason: str = "") -> bool:
        """Queue the close frame (once); True if this call queued it."""
        if self.close_sent:
            return False
        self._out.append(close_frame(code, reason))
        self.close_sent = True
        return True

    def ping(self, excused: bool = False) -> bool:
        """The heartbeat: queue a ping. False, and nothing queued, when nothing came from
        the client since the last one (it is gone) unless `excused` (it is not being
        read, so it cannot be heard)."""
        if self.close_sent:
            return True
        if not self.heard and not excused:
            return False
        self.heard = False
        self._out.append(control_frame(OP_PING))
        return True

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)
