"""The broker: the one public API every transport uses.

- publish: say(), say_many() (a burst of one session, stored together), and join/leave
  events from presence transitions.
- subscribe(room, cursor): an async iterator of batches, history first, then live.
- presence: connect()/disconnect() for sockets, poll() for pollers, claim(), leave().

Fan-out never awaits a subscriber: each one has a bounded queue that the backend's
listener fills without blocking. A subscriber whose queue overflows while its
consumer is busy elsewhere (a stalled socket) is cut off with SlowConsumer; it can
resume from its last id.

The fast path: a streaming transport may hand its subscription the socket it writes
to (a Sink: an asyncio transport, or anything with its three methods) and which of an
event's ready-made framings it speaks. While the subscriber is caught up (its consumer
parked, nothing queued), the fan-out writes live events straight to that socket: no
queue, no task wakeup, no per-client encoding, one write per batch. A client whose
unsent bytes in this process pass `max_unsent` is cut off as too slow.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

from chatroom.broker.backend import Backend, Draft, Stored
from chatroom.broker.tasks import cancel_requested, stop_tasks
from chatroom.core.events import (
    Event,
    EventType,
    Position,
    encode_reset,
    sse_frame,
    ws_frame,
)
from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.core.validation import InvalidInput, validate_text
from chatroom.observability import Throttled

__all__ = [
    "Broker", "Delivery", "Framing", "Reset", "Sink", "SlowConsumer", "Stats", "Subscription",
]

log = logging.getLogger(__name__)

MAX_CLIENT_ID = 64


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
    def at(cls, oldest: Position | None) -> Reset:
        data = encode_reset(oldest)
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
        "_broker", "_closed", "_cursor", "_error", "_framing", "_initial", "_need_read",
        "_parked", "_queue", "_reading", "_ready", "_sink", "_started", "_waiter", "_woken",
        "reason", "room", "session",
    )

    def __init__(
        self, broker: Broker, room: str, cursor: Position | None, session: str | None
    ) -> None:
        self._broker = broker
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
        # woken from parked and not polled since: as caught up as when it parked
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
            batch = await self.poll()
            if batch is not None:
                return batch
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._parked = False

    def on_ready(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` when a subscriber that `poll()` found caught up has more to take.

        For a transport that drives the subscription from callbacks rather than from
        a task that iterates it: it polls until `poll()` answers None, and polls again
        when called back. It is called back, too, when the subscription ends.
        """
        self._ready = callback

    async def poll(self) -> list[Delivery] | None:
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
        backend = self._broker.backend
        page_size = self._broker.page
        if not self._started and self._initial is None:
            page = await backend.read_after(self.room, None, self._broker.archive)
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
        if len(self._queue) + len(events) > self._broker.max_pending:
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
                    f"too slow: more than {self._broker.max_pending} events waiting; "
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
        self._broker._unregister(self)
        self._wake()


def _busiest_first(room: tuple[str, int]) -> tuple[int, str]:
    return -room[1], room[0]


class Broker:
    def __init__(
        self,
        backend: Backend,
        *,
        archive: int = 50,
        page: int = 500,
        max_pending: int = 1024,
        max_unsent: int = 1 << 20,
        presence_ttl: float = 30.0,
        linger: float = 5.0,
        reap_interval: float = 1.0,
        room_idle: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.archive = archive
        self.page = page
        self.max_pending = max_pending
        # bytes a sink may hold unsent before its subscriber is cut off as too slow
        self.max_unsent = max_unsent
        self.presence_ttl = presence_ttl
        self.linger = linger
        self.reap_interval = reap_interval
        # seconds a room without members stays listed after its last event
        self.room_idle = room_idle
        self._wall = wall_clock
        self._rooms: dict[str, set[Subscription]] = {}
        # per watched room, the position of the last event fanned out
        self._heads: dict[str, Position] = {}
        # connection id -> (room, user, session) for sockets kept present by heartbeat
        self._sockets: dict[str, tuple[str, str, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = Stats()
        self.closing = False
        self._problems = Throttled(log)

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.backend.set_listener(self._on_events)
        await self.backend.start()
        self._tasks = [
            asyncio.create_task(self._reaper(), name="chatroom-presence-reaper"),
            asyncio.create_task(self._heartbeat(), name="chatroom-presence-heartbeat"),
        ]

    def shutdown(self) -> None:
        """Stop serving: every subscription ends now; new ones end at once."""
        self.closing = True
        for sub in [s for subs in self._rooms.values() for s in subs]:
            sub.close("shutdown")

    async def close(self) -> None:
        self.shutdown()
        await stop_tasks(self._tasks)
        self._tasks = []
        await self.backend.close()

    # --- publishing ------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    async def say(
        self, room: str, user: str, session: str, text: object, client_id: object = None
    ) -> Stored:
        """Store a message; answers once it is durable.

        Raises InvalidInput for bad input; LeftRoom when this session left the room,
        NicknameTaken when another session now holds the nickname there, NotMember when
        this session is not a live member of the room (it never entered, or ran out).
        """
        draft = self.draft(user, session, text, client_id)
        # Identity is the server's word: only the live member holding the name speaks
        # as it, and only in a room it is in.
        await self.backend.presence.check(room, user, session)
        stored = await self.backend.append(room, draft)
        if not stored.duplicate:
            self.stats.published += 1
        return stored

    def draft(self, user: str, session: str, text: object, client_id: object = None) -> Draft:
        """A message of `user` ready to store, stamped now; InvalidInput for bad input."""
        clean = validate_text(text)
        if client_id is not None and (
            not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID
        ):
            raise InvalidInput(
                "client_id", f"client_id must be a string of 1 to {MAX_CLIENT_ID} characters"
            )
        return Draft("message", user, self._now_ms(), clean, session, client_id or None)

    async def say_many(
        self, room: str, user: str, session: str, drafts: Sequence[Draft]
    ) -> list[Stored]:
        """Store several messages of one session (made by draft()) in their order; answers
        once all are durable. The backend may commit them together, so a burst from one
        client reaches each subscriber as one write.

        Raises LeftRoom, NicknameTaken or NotMember as say() does, for all of them.
        """
        if not drafts:
            return []
        await self.backend.presence.check(room, user, session)
        stored = await self.backend.append_many(room, drafts)
        self.stats.published += sum(not s.duplicate for s in stored)
        return stored

    async def _announce(self, room: str, kind: EventType, user: str) -> None:
        try:
            await self.backend.append(room, Draft(kind, user, self._now_ms()))
            self.stats.published += 1
        except Exception as exc:
            self._problems.warning(
                "announce", "could not store %s of %r in %r: %s", kind, user, room, exc
            )

    def _on_events(self, room: str, events: Sequence[Event]) -> None:
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
                    elif sink.get_write_buffer_size() > limit:
                        sub._fail(
                            SlowConsumer(
                                "too slow: too much unsent to this client; "
                                "reconnect and resume from your last id"
                            )
                        )
                        self.stats.cut_off += 1
                    else:
                        try:
                            sink.write(framings[sub._framing])
                        except Exception as exc:
                            # a transport that fails its write has lost its client
                            sub._fail(ConnectionResetError(f"write failed: {exc}"), "gone")
                            continue
                        sub._cursor = last
                    continue
            # Anything else takes the queue, which knows gaps, overlaps and new epochs.
            if not sub._push(events):
                self.stats.cut_off += 1

    # --- subscribing -----------------------------------------------------------

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

    def _unregister(self, sub: Subscription) -> None:
        subs = self._rooms.get(sub.room)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._rooms[sub.room]
            self._heads.pop(sub.room, None)
            self.backend.unwatch(sub.room)

    async def recent(self, room: str) -> tuple[list[Event], Position | None]:
        """The archive a page renders: the last `archive` events and the newest position."""
        page = await self.backend.read_after(room, None, self.archive)
        return page.events, page.head

    async def history(self, room: str, before: Position | None, limit: int) -> list[Event]:
        """Page back through a room's history: up to `limit` events before `before`."""
        return await self.backend.read_before(room, before, limit)

    async def room_exists(self, room: str) -> bool:
        """True when the room has history or present members (it was opened before)."""
        if self._rooms.get(room) or await self.backend.presence.members(room):
            return True
        page = await self.backend.read_after(room, None, 1)
        return page.head is not None

    def subscribers(self, room: str | None = None) -> int:
        if room is not None:
            return len(self._rooms.get(room, ()))
        return sum(len(s) for s in self._rooms.values())

    # --- presence --------------------------------------------------------------

    async def claim(self, room: str, user: str, session: str) -> None:
        """Enter `user` in `room` for this session (the welcome form), also after a Leave.

        Raises NicknameTaken if another live session holds the nickname there.
        """
        await self.poll(room, user, session, rejoin=True)

    async def check(self, room: str, user: str, session: str) -> None:
        """Raise as say() would: LeftRoom, NicknameTaken or NotMember."""
        await self.backend.presence.check(room, user, session)

    async def poll(self, room: str, user: str, session: str, rejoin: bool = False) -> None:
        """A polling client asked for news: it stays present presence_ttl more seconds.

        Raises NicknameTaken, or LeftRoom when this session pressed Leave in the room.
        """
        conn = f"poll:{session}"
        if await self.backend.presence.touch(
            room, user, session, conn, self.presence_ttl, rejoin
        ):
            await self._announce(room, "join", user)

    async def connect(self, room: str, user: str, session: str, conn: str) -> None:
        """A socket opened: the user is present while it stays open.

        Raises NicknameTaken, or LeftRoom when this session pressed Leave in the room.
        """
        joined = await self.backend.presence.touch(room, user, session, conn, self.presence_ttl)
        self._sockets[conn] = (room, user, session)
        if joined:
            await self._announce(room, "join", user)

    async def disconnect(self, conn: str) -> None:
        """A socket closed: its user stays present `linger` seconds (a reload is no leave)."""
        entry = self._sockets.pop(conn, None)
        if entry is None:
            return
        room, user, _ = entry
        await self.backend.presence.release(room, user, conn, self.linger)

    async def leave(self, room: str, user: str, session: str) -> None:
        """The leave button: the member goes now and its subscriptions in the room end."""
        # Its sockets no longer keep it present: the heartbeat would bring it back.
        for conn, entry in list(self._sockets.items()):
            if entry == (room, user, session):
                del self._sockets[conn]
        if await self.backend.presence.leave(room, user, session):
            await self._announce(room, "leave", user)
        self._end_session(room, session)

    def _end_session(self, room: str, session: str) -> None:
        for sub in list(self._rooms.get(room, ())):
            if sub.session == session:
                sub.close("left")

    async def members(self, room: str) -> list[str]:
        return await self.backend.presence.members(room)

    async def rooms(
        self, limit: int | None = None, after: tuple[int, str] | None = None
    ) -> list[tuple[str, int]]:
        """Live and recent rooms with their member counts, busiest first, then by name.

        A room is listed while it has members, and after its last member went, until
        its last event is `room_idle` seconds old. History outlives the listing: a room
        that dropped out keeps what retention keeps. `after` is the (members, name) of
        the last room of the previous page: the answer starts behind it, `limit` long.
        """
        counts = await self.backend.presence.counts()
        # (an infinite room_idle lists every room that ever held an event)
        since = int(max(0.0, self._now_ms() - self.room_idle * 1000))
        recent = await self.backend.active_rooms(since)
        listed = [(name, counts.get(name, 0)) for name in recent.keys() | counts.keys()]
        if after is not None:
            bound = (-after[0], after[1])
            listed = [r for r in listed if (-r[1], r[0]) > bound]
        if limit is None:
            return sorted(listed, key=_busiest_first)
        return heapq.nsmallest(limit, listed, key=_busiest_first)

    async def _reaper(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(self.reap_interval)
            try:
                for room, user in await self.backend.presence.expire():
                    await self._announce(room, "leave", user)
            except Exception as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc
                self._problems.warning("reaper", "presence expiry failed: %s", exc)
            else:
                self._problems.recovered("reaper", "presence expiry works again")

    async def _heartbeat(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(self.presence_ttl / 3)
            for conn, (room, user, session) in list(self._sockets.items()):
                if conn not in self._sockets:
                    continue  # closed while this round ran
                try:
                    joined = await self.backend.presence.touch(
                        room, user, session, conn, self.presence_ttl
                    )
                except LeftRoom:
                    # It pressed Leave on another node: end its subscriptions here too.
                    self._sockets.pop(conn, None)
                    self._end_session(room, session)
                    continue
                except NicknameTaken:
                    # Its presence lapsed (a long stall) and another session took the name.
                    self._sockets.pop(conn, None)
                    self._end_session(room, session)
                    continue
                except Exception as exc:
                    if cancel_requested():
                        raise asyncio.CancelledError from exc
                    self._problems.warning("heartbeat", "presence heartbeat failed: %s", exc)
                    continue
                self._problems.recovered("heartbeat", "presence heartbeat works again")
                if joined:
                    # It had lapsed and been reported gone (e.g. Redis lost it): back again.
                    await self._announce(room, "join", user)
