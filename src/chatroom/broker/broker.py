"""The broker: the one public API every transport uses, a thin facade over
the hub (subscriptions and fan-out) and the presence service.

- publish: say(), say_many() (a burst of one session, stored together), and join/leave
  events from presence transitions.
- subscribe(room, cursor): an async iterator of batches, history first, then live
  (the hub).
- presence: connect()/disconnect() for sockets, keep_present() for pollers, claim(),
  leave() (the presence service).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Sequence

from chatroom.broker.backend import Backend, Draft, Stored
from chatroom.broker.hub import (
    Delivery,
    Fanout,
    Framing,
    Hub,
    Reset,
    Sink,
    SlowConsumer,
    Stats,
    Subscription,
)
from chatroom.broker.presence import PresenceService
from chatroom.core.events import Event, EventType, Position
from chatroom.core.validation import InvalidInput, validate_text
from chatroom.observability import Throttled

__all__ = [
    "Broker", "Delivery", "Fanout", "Framing", "Reset", "Sink", "SlowConsumer", "Stats",
    "Subscription",
]

log = logging.getLogger(__name__)

MAX_CLIENT_ID = 64


def _busiest_first(room: tuple[str, int]) -> tuple[int, str]:
    return -room[1], room[0]


class Broker:
    """Publishing, and the hub's and the presence service's public API, over a Backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        fanout: Fanout | None = None,
        presence_ttl: float = 30.0,
        linger: float = 5.0,
        reap_interval: float = 1.0,
        room_idle: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.hub = Hub(backend, fanout or Fanout())
        self.presence = PresenceService(
            backend, self.hub, self._announce,
            presence_ttl=presence_ttl, linger=linger, reap_interval=reap_interval,
        )
        # seconds a room without members stays listed after its last event
        self.room_idle = room_idle
        # the time events are stamped with, and rooms aged by (seconds)
        self.wall_clock = wall_clock
        self._problems = Throttled(log)
        # the presence service's and the hub's API, as the transports call it
        self.claim = self.presence.claim
        self.check = self.presence.check
        self.keep_present = self.presence.keep_present
        self.connect = self.presence.connect
        self.disconnect = self.presence.disconnect
        self.leave = self.presence.leave
        self.members = self.presence.members
        self.subscribe = self.hub.subscribe
        self.subscribers = self.hub.subscribers

    @property
    def stats(self) -> Stats:
        return self.hub.stats

    @property
    def closing(self) -> bool:
        return self.hub.closing

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.backend.set_listener(self.hub.deliver)
        await self.backend.start()
        self.presence.start()

    def shutdown(self) -> None:
        """Stop serving: every subscription ends now; new ones end at once."""
        self.hub.shutdown()

    async def close(self) -> None:
        self.shutdown()
        await self.presence.stop()
        await self.backend.close()

    # --- publishing ------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

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
            self.hub.stats.published += 1
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
        self.hub.stats.published += sum(not s.duplicate for s in stored)
        return stored

    async def _announce(self, room: str, kind: EventType, user: str) -> None:
        try:
            await self.backend.append(room, Draft(kind, user, self._now_ms()))
            self.hub.stats.published += 1
        except Exception as exc:
            self._problems.warning(
                "announce", "could not store %s of %r in %r: %s", kind, user, room, exc
            )

    # --- history and rooms ----------------------------------------------------

    async def recent(self, room: str) -> tuple[list[Event], Position | None]:
        """The archive a page renders: the last `archive` events and the newest position."""
        page = await self.backend.read_after(room, None, self.hub.archive)
        return page.events, page.head

    async def history(self, room: str, before: Position | None, limit: int) -> list[Event]:
        """Page back through a room's history: up to `limit` events before `before`."""
        return await self.backend.read_before(room, before, limit)

    async def room_exists(self, room: str) -> bool:
        """True when the room has history or present members (it was opened before)."""
        if self.hub.following(room) or await self.backend.presence.members(room):
            return True
        page = await self.backend.read_after(room, None, 1)
        return page.head is not None

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
