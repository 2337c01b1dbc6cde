"""The fan-out's fast path for streaming transports: write live events to the socket now.

A sink writes the frames each event carries ready-made (`Event.ws`, `Event.sse_chunk`)
straight to the connection's transport: no task wakeup, no per-client encoding, and
the events of one batch go out in one write. The kernel coalesces further when a
client drains slower than events come. A client whose unsent bytes (queued in this
process past the kernel's socket buffer) pass `limit` is reported too slow; one whose
connection is lost ends its subscription with ConnectionResetError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from operator import attrgetter

from chatroom.broker import Sink
from chatroom.core.events import Event

__all__ = ["socket_sink"]


def socket_sink(transport: asyncio.Transport, frame: str, limit: int) -> Sink:
    """A sink writing each event's `frame` attribute ("ws", "sse_chunk" or "sse").

    Whoever ends the stream in its own framing (a WebSocket close frame) takes the sink
    off the subscription first: nothing may follow that.
    """
    get: Callable[[Event], bytes] = attrgetter(frame)

    def write(events: Sequence[Event]) -> bool:
        if transport.is_closing():
            raise ConnectionResetError("the client has gone")
        if transport.get_write_buffer_size() > limit:
            return False
        if len(events) == 1:
            transport.write(get(events[0]))
        else:
            transport.write(b"".join([get(e) for e in events]))
        return True

    return write
