"""Events, their ids and their one-time JSON encoding."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "UNKNOWN",
    "Event",
    "EventType",
    "Position",
    "encode_reset",
    "new_epoch",
    "parse_cursor",
    "read_cursor",
    "resume_from",
    "sse_chunk",
    "sse_frame",
    "ws_frame",
]

EventType = Literal["join", "leave", "message"]

# Separates the epoch from the offset in an event id: "<epoch>-<offset>".
_SEP = "-"
_EPOCH_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")


def new_epoch() -> str:
    """A fresh epoch for a room stream started afresh (8 lowercase hex characters)."""
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event sits in its room's stream: the stream's epoch and the offset in it.

    Offsets start at 1 and grow by one per stored event. Two positions are comparable
    only within one epoch; a cursor from another epoch must be answered with a reset.
    """

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}{_SEP}{self.offset}"


def parse_cursor(value: str | None) -> Position | None:
    """Parse a client's cursor; None when absent or not an id this server could have made.

    A malformed cursor is treated as unknown, which the broker answers with a reset:
    the client gets what is retained and is told, never an error that loses its place.
    """
    if not value:
        return None
    epoch, sep, offset = value.rpartition(_SEP)
    if not sep or not epoch or len(epoch) > 32 or not set(epoch) <= _EPOCH_CHARS:
        return None
    if not offset.isascii() or not offset.isdigit() or len(offset) > 18:
        return None
    return Position(epoch, int(offset))


# A position no stream holds: what a malformed cursor stands for, so it gets a reset.
UNKNOWN = Position("", 0)


def read_cursor(value: str | None) -> Position | None:
    """A client's cursor: None when absent (the archive), UNKNOWN when malformed (a reset)."""
    if not value:
        return None
    return parse_cursor(value) or UNKNOWN


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a room, with its JSON encoding made once when it was published.

    `data` is the encoded wire object; every transport reuses these bytes.
    """

    room: str
    position: Position
    type: EventType
    user: str
    timestamp: int
    text: str | None = None
    data: bytes = field(default=b"", compare=False, repr=False)
    # the same event as one Server-Sent Events frame, also made once
    sse: bytes = field(default=b"", compare=False, repr=False)
    # and as the bytes the fan-out writes to a socket as they are: a WebSocket text
    # frame, and the SSE frame as one HTTP/1.1 chunk
    ws: bytes = field(default=b"", compare=False, repr=False)
    sse_chunk: bytes = field(default=b"", compare=False, repr=False)

    @property
    def id(self) -> str:
        return str(self.position)

    @property
    def offset(self) -> int:
        return self.position.offset

    @classmethod
    def create(
        cls,
        room: str,
        position: Position,
        type: EventType,
        user: str,
        timestamp: int,
        text: str | None = None,
    ) -> Event:
        """A new event, encoded now, once."""
        wire: dict[str, Any] = {
            "id": str(position),
            "room": room,
            "type": type,
            "user": user,
        }
        if text is not None:
            wire["text"] = text
        wire["timestamp"] = timestamp
        return cls(room, position, type, user, timestamp, text).encoded(orjson.dumps(wire))

    @classmethod
    def decode(cls, data: bytes) -> Event:
        """Rebuild an event from its stored encoding (the bytes are kept as they are)."""
        wire = orjson.loads(data)
        position = parse_cursor(wire["id"])
        if position is None:
            raise ValueError(f"stored event has a malformed id: {wire['id']!r}")
        event = cls(
            wire["room"], position, wire["type"], wire["user"], wire["timestamp"],
            wire.get("text"),
        )
        return event.encoded(data)

    def encoded(self, data: bytes) -> Event:
        """This event with `data` as its wire encoding and every framing of it made now."""
        sse = sse_frame(self.position, data)
        return Event(
            self.room, self.position, self.type, self.user, self.timestamp, self.text,
            data, sse, ws_frame(data), sse_chunk(sse),
        )

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads(self.data)
        return result


def sse_frame(position: Position | None, data: bytes) -> bytes:
    """One Server-Sent Events frame; JSON never holds a raw newline, so one data line."""
    if position is None:
        return b"data: " + data + b"\n\n"
    return b"id: " + str(position).encode() + b"\ndata: " + data + b"\n\n"


def ws_frame(data: bytes) -> bytes:
    """`data` as one unmasked, unfragmented WebSocket text frame (RFC 6455, server side)."""
    n = len(data)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + data


def sse_chunk(frame: bytes) -> bytes:
    """`frame` as one HTTP/1.1 chunk of a chunked response body."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def encode_reset(oldest: Position | None, room: str | None = None) -> bytes:
    """The `reset` marker sent before replayed events when a cursor could not be honoured.

    `id` is the oldest retained id, or null when the room holds nothing yet. On a
    connection that follows several rooms it names its `room`, as an event does.
    """
    marker: dict[str, Any] = {"type": "reset", "id": str(oldest) if oldest else None}
    if room is not None:
        marker["room"] = room
    return orjson.dumps(marker)


def resume_from(
    cursor: Position, epoch: str | None, oldest: int | None, head: int | None
) -> tuple[bool, int]:
    """Decide how to answer a cursor against a stream: (reset, offset to read after).

    The stream has `epoch` and holds offsets oldest..head (None when empty). A cursor
    is honoured when it is from this epoch and between oldest - 1 and head; otherwise
    the answer is a reset and everything retained (read after oldest - 1).
    """
    if epoch is None or oldest is None or head is None:
        # Nothing stored: a cursor can only be from a stream that is gone.
        return True, 0
    if cursor.epoch == epoch and oldest - 1 <= cursor.offset <= head:
        return False, cursor.offset
    return True, oldest - 1
