"""The hub: this node's subscriptions, by room, and the fan-out to them.

Fan-out never awaits a subscriber: each one has a bounded queue that the backend's
listener (`Hub.deliver`) fills without blocking. A subscriber whose queue overflows
while its consumer is busy elsewhere (a stalled socket) is cut off with SlowConsumer;
it can resume from its last id.

The fast path: a streaming transport may hand its subscription the socket it writes
to (a Sink: an asyncio transport, or anything with its three methods) and which of an
event's ready-made framings it speaks. While the subscriber is caught up (its consumer
parked, nothing queued), the fan-out writes live events straight to that socket: no
queue, no task wakeup, no per-client encoding, one write per batch. A client whose
unsent bytes in this process pass `max_unsent` is cut off as too slow. While a
socket has anything unsent (its kernel buffer is full), its events take the queue
instead, and its consumer writes them together once the socket drains: a stalled
client costs references in a bounded queue, not a buffer object per event.

`Subscription` and `Hub` live in one module on purpose: the fan-out reads a
subscription's state directly (a few slot loads per subscriber per batch is what
keeps it at the floor's cost); nothing outside this module does. A subscription
reaches the hub only through its public attributes and `unregister()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

from chatroom.broker.backend import Backend
from chatroom.broker.tasks import cancel_requested
from chatroom.core.events import Event, Position, encode_reset, sse_frame, ws_frame

__all__ = [
    "Delivery", "Fanout", "Framing", "Hub", "Reset", "Sink", "SlowConsumer", "Stats",
    "Subscription",
]


@dataclass(frozen=True, slots=True)
class Reset:
    """Sent before replayed events when the subscriber's cursor could not be honoured."""

    oldest: Position | None
    data: bytes
    # its framings, as an Event carries them
    sse: bytes
    ws: bytes

    # a reset carries no id of its own: a client must not resume from it
    id = None

    @classmethod
    def at(cls, oldest: Position | None, room: str | None = None) -> Reset:
        """The marker; naming its `room` for a connection that follows several."""
        data = encode_reset(oldest, room)
        return cls(oldest, data, sse_frame(None, data), ws_frame(data))


Delivery = Event | Reset


class Sink(Protocol):
    """Where the fan-out writes a caught-up subscriber's events (an asyncio transport)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


# Which framing a sink speaks: an index into the framings the fan-out makes per batch.
Framing = Literal["ws", "sse_chunk", "sse"]
_FRAMINGS: dict[str, int] = {"ws": 0, "sse_chunk": 1, "sse": 2}


class SlowConsumer(Exception):
    """The subscriber fell too far behind and was cut off; it may resume from its cursor."""


@dataclass(slots=True)
class Stats:
    published: int = 0
    deliveries: int = 0
    cut_off: int = 0


class Subscription:
    """One subscriber's view of a room. Registered on creation; use `async with`."""

    # the fan-out touches thousands of these per event: keep them small and near
    __slots__ = (
        "_closed", "_cursor", "_error", "_framing", "_hub", "_initial", "_need_read",
        "_parked", "_queue", "_reading", "_ready", "_sink", "_started", "_waiter", "_woken",
        "reason", "room", "session",
    )

    def __init__(
        self, hub: Hub, room: str, cursor: Position | None, session: str | None
    ) -> None:
        self._hub = hub
        self.room = room
        self.session = session
        self._initial = cursor
        # the position of the last event handed out; None until known
        self._cursor: Position | None = cursor
        self._started = False
        self._need_read = True
        self._reading = False
        # events handed over while the consumer was busy (a list: empty ones cost nothing)
        self._queue: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # why it ended: "left" (the Leave button), "shutdown", "slow", "gone" or "closed"
        self.reason: str | None = None
        self._error: Exception | None = None
        self._sink: Sink | None = None
        self._framing = 0
        # the consumer took everything and nothing has woken it yet: it is caught up
        self._parked = False
        self._ready: Callable[[], None] | None = None
        # woken from parked and not taken from since: as caught up as when it parked
        self._woken = False

    @property
    def cursor(self) -> Position | None:
        return self._cursor

    def set_sink(self, sink: Sink | None, framing: Framing = "ws") -> None:
        """Let the fan-out write live events to `sink` while this subscriber is caught up.

        `framing` names the bytes each event carries ready-made that the socket speaks.
        The consumer still iterates the subscription: it gets history, catch-up after a
        gap, and whatever arrives while it is busy. Everything it was handed is written
        before it asks for more, so events reach the socket in order whichever path they
        take. A transport that ends the stream in its own framing (a WebSocket close
        frame) takes the sink off first: nothing may follow that. When the sink is
        closing (the client has gone), the consumer's next read raises ConnectionError.
        """
        self._sink = sink
        self._framing = _FRAMINGS[framing]

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[Delivery]:
        while True:
            batch = await self.take()
            if batch is not None:
                return batch
            if cancel_requested():
                # A cancellation a client library swallowed during a read (redis-py can):
                # honoured here, or this task would wait for news for ever.
                raise asyncio.CancelledError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._parked = False

    def on_ready(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` when a subscriber that `take()` found caught up has more.

        For a transport that drives the subscription from callbacks rather than from
        a task that iterates it: it takes until `take()` answers None, and takes again
        when called back. It is called back, too, when the subscription ends.
        """
        self._ready = callback

    async def take(self) -> list[Delivery] | None:
        """The next batch; None when caught up (parked). StopAsyncIteration once ended.

        Raises the error that ended the subscription (SlowConsumer, ConnectionError),
        or what the backend raised reading history (then it may be polled again).
        """
        self._woken = False
        while True:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            if self._need_read:
                self._reading = True
                # cleared first: a push that overflows while this read is out sets it again
                self._need_read = False
                try:
                    batch = await self._read()
                except Exception:
                    self._need_read = True
                    if self._closed:
                        # Closed while the read was out (a shutdown closing the backend
                        # under it): the subscription ends as it was told, not with an error.
                        if self._error is not None:
                            raise self._error from None
                        raise StopAsyncIteration from None
                    raise
                except BaseException:
                    self._need_read = True
                    raise
                finally:
                    self._reading = False
                if batch:
                    return batch
                continue
            if self._queue:
                live = self._take_live()
                if live:
                    return live
                continue
            self._parked = True
            return None

    async def _read(self) -> list[Delivery]:
        backend = self._hub.backend
        page_size = self._hub.page
        if not self._started and self._initial is None:
            page = await backend.read_after(self.room, None, self._hub.archive)
            self._started = True
            self._cursor = page.head
            return list(page.events)
        cursor = self._cursor
        if cursor is None:
            # Nothing of this stream seen yet (the room was empty): all it holds is news.
            bounds = await backend.read_after(self.room, None, 0)
            if bounds.oldest is None:
                return []
            cursor = Position(bounds.oldest.epoch, bounds.oldest.offset - 1)
        page = await backend.read_after(self.room, cursor, page_size)
        self._started = True
        out: list[Delivery] = []
        if page.reset:
            out.append(Reset.at(page.oldest))
            self._cursor = None
        out.extend(page.events)
        if page.events:
            self._cursor = page.events[-1].position
        if len(page.events) >= page_size:
            self._need_read = True
        return out

    def _take_live(self) -> list[Delivery]:
        out: list[Delivery] = []
        queue, self._queue = self._queue, []
        for event in queue:
            cursor = self._cursor
            if cursor is not None:
                if event.position.epoch != cursor.epoch or event.offset > cursor.offset + 1:
                    # A gap, or the stream started afresh: let the backend answer.
                    self._need_read = True
                    break
                if event.offset <= cursor.offset:
                    continue
            out.append(event)
            self._cursor = event.position
        return out

    def _push(self, events: Sequence[Event]) -> bool:
        """Called by the fan-out, never blocks. False if this push cut the subscriber off."""
        if self._closed:
            return True
        if len(self._queue) + len(events) > self._hub.max_pending:
            if (
                self._reading
                or self._need_read
                or self._waiter is not None
                or self._woken
                or not self._queue
            ):
                # Catching up from the backend, or caught up (waiting, or nothing left
                # waiting) and handed more at once than fit (a group commit, one XREAD):
                # it is not behind. The backend holds these; read them after.
                self._queue.clear()
                self._need_read = True
                self._wake()
                return True
            self._fail(
                SlowConsumer(
                    f"too slow: more than {self._hub.max_pending} events waiting; "
                    "reconnect and resume from your last id"
                )
            )
            return False
        self._queue.extend(events)
        self._wake()
        return True

    def _wake(self) -> None:
        if self._parked:
            self._woken = True
        self._parked = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        ready = self._ready
        if ready is not None:
            ready()

    def _fail(self, error: Exception, reason: str = "slow") -> None:
        self._error = error
        self._queue.clear()
        self.close(reason)

    def close(self, reason: str = "closed") -> None:
        """End the subscription; `reason` tells the transport why ("left", "shutdown")."""
        if self._closed:
            return
        self._closed = True
        self.reason = reason
        self._hub.unregister(self)
        self._wake()


@dataclass(frozen=True, slots=True)
class Fanout:
    """How a hub serves its subscribers."""

    # events a new subscriber without a cursor gets first, and events per read
    archive: int = 50
    page: int = 500
    # events a subscriber may have waiting before it is cut off as too slow
    max_pending: int = 1024
    # bytes a sink may hold unsent before its subscriber is cut off as too slow
    max_unsent: int = 1 << 20


class Hub:
    """This node's subscribers by room, and the fan-out of each batch of events to them."""

    def __init__(self, backend: Backend, fanout: Fanout = Fanout()) -> None:
        self.backend = backend
        self.archive = fanout.archive
        self.page = fanout.page
        self.max_pending = fanout.max_pending
        self.max_unsent = fanout.max_unsent
        self._rooms: dict[str, set[Subscription]] = {}
        # per watched room, the position of the last event fanned out
        self._heads: dict[str, Position] = {}
        self.stats = Stats()
        self.closing = False

    def shutdown(self) -> None:
        """Stop serving: every subscription ends now; new ones end at once."""
        self.closing = True
        for sub in [s for subs in self._rooms.values() for s in subs]:
            sub.close("shutdown")

    def end_session(self, room: str, session: str) -> None:
        """End the subscriptions of this session in this room (it left)."""
        for sub in list(self._rooms.get(room, ())):
            if sub.session == session:
                sub.close("left")

    def following(self, room: str) -> bool:
        """True when this node has a subscriber in the room."""
        return bool(self._rooms.get(room))

    def deliver(self, room: str, events: Sequence[Event]) -> None:
        """The backend's listener: a room's newly stored events, fanned out to this
        node's subscribers without awaiting any of them."""
        subs = self._rooms.get(room)
        if not subs:
            return
        n = len(events)
        self.stats.deliveries += n * len(subs)
        first, last = events[0].position, events[-1].position
        epoch, before = first.epoch, first.offset - 1
        heads = self._heads
        previous = heads.get(room)
        heads[room] = last
        # The direct path takes a batch that is contiguous and not too big at once, to a
        # parked subscriber with a sink whose cursor it follows: in the steady state that
        # cursor is the very Position the last batch ended with.
        if n > self.max_pending or last.epoch != epoch or last.offset - before != n:
            for sub in tuple(subs):
                if not sub._push(events):
                    self.stats.cut_off += 1
            return
        if previous is not None and (previous.offset != before or previous.epoch != epoch):
            previous = None
        if n == 1:
            framings = (first_event := events[0]).ws, first_event.sse_chunk, first_event.sse
        else:
            framings = (
                b"".join([e.ws for e in events]),
                b"".join([e.sse_chunk for e in events]),
                b"".join([e.sse for e in events]),
            )
        limit = self.max_unsent
        for sub in tuple(subs):
            sink = sub._sink
            if sink is not None and sub._parked:
                cursor = sub._cursor
                if (
                    cursor is previous
                    or cursor is None
                    or (cursor.offset == before and cursor.epoch == epoch)
                ):
                    if sink.is_closing():
                        # the client is gone: its consumer ends with this error
                        sub._fail(ConnectionResetError("the client has gone"), "gone")
                        continue
                    unsent = sink.get_write_buffer_size()
                    if not unsent:
                        try:
                            sink.write(framings[sub._framing])
                        except Exception as exc:
                            # a transport that fails its write has lost its client
                            sub._fail(ConnectionResetError(f"write failed: {exc}"), "gone")
                            continue
                        sub._cursor = last
                        continue
                    if unsent > limit:
                        sub._fail(
                            SlowConsumer(
                                "too slow: too much unsent to this client; "
                                "reconnect and resume from your last id"
                            )
                        )
                        self.stats.cut_off += 1
                        continue
                    # The kernel's buffer is full, so a write now would only wait in
                    # this process, one buffer object per write: the queue takes the
                    # events, and the consumer writes them as one once the socket
                    # drains (a client that stays stalled overflows the queue).
            # Anything else takes the queue, which knows gaps, overlaps and new epochs.
            if not sub._push(events):
                self.stats.cut_off += 1

    def subscribe(
        self, room: str, cursor: Position | None = None, session: str | None = None
    ) -> Subscription:
        """Subscribe from `cursor` (None: the last `archive` events first, then live)."""
        sub = Subscription(self, room, cursor, session)
        subs = self._rooms.get(room)
        if subs is None:
            subs = self._rooms[room] = set()
            self.backend.watch(room)
        subs.add(sub)
        if self.closing:
            sub.close("shutdown")
        return sub

    def unregister(self, sub: Subscription) -> None:
        """A subscription ended: forget it (and stop watching a room nobody follows)."""
        subs = self._rooms.get(sub.room)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._rooms[sub.room]
            self._heads.pop(sub.room, None)
            self.backend.unwatch(sub.room)

    def subscribers(self, room: str | None = None) -> int:
        if room is not None:
            return len(self._rooms.get(room, ()))
        return sum(len(s) for s in self._rooms.values())
