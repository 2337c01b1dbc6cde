"""The Backend protocol: what the broker needs from storage, and the contract each keeps.

Every backend (memory, sqlite, redis) is checked against the same contract suite in
tests/broker/test_contract.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatroom.core.events import Event, EventType, Position

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Draft",
    "Listener",
    "Page",
    "Presence",
    "Stored",
]


class BackendUnavailable(Exception):
    """The backend cannot be reached now; nothing was stored. Answer 503."""


@dataclass(frozen=True, slots=True)
class Draft:
    """An event asked to be stored; the backend gives it its position."""

    type: EventType
    user: str
    timestamp: int
    text: str | None = None
    # the session that said it; with client_id, makes a retried say idempotent
    session: str | None = None
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    event: Event
    # True when (session, client_id) matched an event already stored: nothing new was stored
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """An answer to read_after."""

    events: list[Event]
    # the cursor could not be honoured (other epoch, trimmed away, or in the future)
    reset: bool
    # oldest and newest retained positions; None when the room holds nothing
    oldest: Position | None
    head: Position | None


# Called with a room's newly stored events, in offset order, once per event per process.
Listener = Callable[[str, Sequence[Event]], None]


class Presence(Protocol):
    """Who is in which room, shared by every process that shares the backend.

    The rules are core.presence's (PresenceTable is the reference): a member is keyed
    by the skeleton of its nickname (core.validation.skeleton), so look-alike names are
    one name, and shown by the name its session chose; the Leave marker belongs to the
    (room, session) that pressed Leave and only that session's rejoin clears it.

    Join and leave transitions are reported exactly once (to the caller that caused
    them): touch() returns True for a join; leave() and expire() report leaves.
    """

    async def touch(
        self, room: str, user: str, session: str, conn: str, ttl: float, rejoin: bool = False
    ) -> bool:
        """Keep `user` present through `conn` for `ttl` seconds. True if the user joined.

        Raises LeftRoom if this session pressed Leave in the room and does not `rejoin`,
        NicknameTaken if another live session holds the nickname (or a look-alike) there.
        """
        ...

    async def check(self, room: str, user: str, session: str) -> None:
        """May this session speak as `user` in `room` now? One atomic look; raises
        LeftRoom if this session left the room, else NicknameTaken if another live
        session holds the nickname (or a look-alike), else NotMember if this session is
        not a live member (never entered, or its presence ran out)."""
        ...

    async def release(self, room: str, user: str, conn: str, linger: float) -> None:
        """`conn` closed; it keeps the user present `linger` more seconds at most."""
        ...

    async def leave(self, room: str, user: str, session: str) -> bool:
        """This session leaves the room: it stays out until it rejoins. If it is the
        member, the member goes now.

        True if it was a member whose leave was not reported yet (the caller emits it).
        """
        ...

    async def expire(self) -> list[tuple[str, str]]:
        """Remove members whose every connection expired; return them (room, name)."""
        ...

    async def members(self, room: str) -> list[str]:
        """The names of the live members of `room`."""
        ...

    async def counts(self) -> dict[str, int]: ...


class Backend(Protocol):
    """Durable, ordered, per-room event streams plus presence.

    Contract:
    - append() returns only once the event is durable (committed / acknowledged).
      Offsets in a room start at 1 and grow by exactly one per stored event, so a
      subscriber can tell a gap from a duplicate. Each stream has an epoch, new
      whenever the stream is started afresh.
    - A Draft with (session, client_id) already stored in the room returns the
      stored event with duplicate=True and stores nothing.
    - Every stored event reaches the listener once, in offset order per room, on
      every process that watch()es the room (local backends call it for all rooms).
    - read_after(room, None, n) is the archive: the last n events. With a cursor it
      is the events after it, at most n, or reset=True and the oldest retained
      events when the cursor is from another epoch, trimmed, or beyond the head.
    """

    # a URL-ish name for logs, e.g. "sqlite:///chat.db"
    name: str
    # whether several processes may share this backend (serve --workers)
    shared: bool
    presence: Presence

    def set_listener(self, listener: Listener) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return if the backend answers; raise BackendUnavailable otherwise."""
        ...

    async def append(self, room: str, draft: Draft) -> Stored: ...

    async def append_many(self, room: str, drafts: Sequence[Draft]) -> list[Stored]:
        """Append `drafts` in their order, as append() would each; returns once all are
        durable, their Stored in the same order. A backend may store them together (one
        commit, one delivery to the listener): that is what lets a burst from one client
        reach every socket in one write."""
        ...

    async def read_after(self, room: str, cursor: Position | None, limit: int) -> Page: ...

    async def read_before(
        self, room: str, before: Position | None, limit: int
    ) -> list[Event]:
        """History paging: up to `limit` events before `before` (or the newest), oldest first."""
        ...

    async def rooms(self) -> list[str]:
        """Every room that holds events."""
        ...

    async def active_rooms(self, since: int) -> dict[str, int]:
        """Rooms whose last event is stamped at or after `since`, each with that stamp.

        A room's last activity is the greatest `timestamp` (ms since the Unix epoch) of
        the events stored in it: a later event with an older stamp (a node whose clock
        is behind) never lowers it, and a duplicate say, which stores nothing, leaves it
        as it was. It outlives retention (trimming keeps the newest events) and is kept
        as durably as the events. Cheap, whatever the history holds: it is kept per room
        when events are appended, never found by reading events; the shared and durable
        backends (sqlite, redis) index it, so a call costs in proportion to the rooms it
        answers, not to every room ever used (memory:// looks at each of its rooms).
        """
        ...

    def watch(self, room: str) -> None:
        """This process has subscribers in `room` (a hint; local backends ignore it)."""
        ...

    def unwatch(self, room: str) -> None: ...
