"""memory://: streams in this process only. For tests and throwaway rooms."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chatroom.broker.backend import Draft, Listener, Page, Presence, Stored
from chatroom.broker.local_presence import LocalPresence
from chatroom.core.events import Event, Position, new_epoch, resume_from

__all__ = ["MemoryBackend"]


@dataclass(slots=True)
class _Stream:
    epoch: str
    retention: int
    events: deque[Event] = field(default_factory=deque)
    head: int = 0
    # the greatest timestamp of the events stored (the room's last activity)
    last: int = 0
    # (session, client_id) -> event, for retained events only
    said: dict[tuple[str, str], Event] = field(default_factory=dict)
    keys: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def oldest(self) -> int | None:
        return self.events[0].offset if self.events else None


class MemoryBackend:
    name = "memory://"
    shared = False

    def __init__(
        self, retention: int = 10_000, presence_clock: Callable[[], float] | None = None
    ) -> None:
        self._retention = retention
        self._streams: dict[str, _Stream] = {}
        self._listener: Listener | None = None
        self.presence: Presence = LocalPresence(presence_clock)

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def append(self, room: str, draft: Draft) -> Stored:
        stored = self._store(room, draft)
        if self._listener is not None and not stored.duplicate:
            self._listener(room, (stored.event,))
        return stored

    async def append_many(self, room: str, drafts: Sequence[Draft]) -> list[Stored]:
        stored = [self._store(room, draft) for draft in drafts]
        fresh = [s.event for s in stored if not s.duplicate]
        if self._listener is not None and fresh:
            self._listener(room, fresh)
        return stored

    def _store(self, room: str, draft: Draft) -> Stored:
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _Stream(new_epoch(), self._retention)
        key = (draft.session, draft.client_id) if draft.session and draft.client_id else None
        if key is not None and key in stream.said:
            return Stored(stream.said[key], duplicate=True)
        stream.head += 1
        event = Event.create(
            room, Position(stream.epoch, stream.head), draft.type, draft.user,
            draft.timestamp, draft.text,
        )
        stream.events.append(event)
        stream.last = max(stream.last, draft.timestamp)
        if key is not None:
            stream.said[key] = event
            stream.keys[event.offset] = key
        while len(stream.events) > stream.retention:
            dropped = stream.events.popleft()
            old_key = stream.keys.pop(dropped.offset, None)
            if old_key is not None:
                del stream.said[old_key]
        return Stored(event)

    async def read_after(self, room: str, cursor: Position | None, limit: int) -> Page:
        stream = self._streams.get(room)
        if stream is None:
            return Page([], cursor is not None, None, None)
        oldest = stream.oldest
        head = Position(stream.epoch, stream.head) if stream.events else None
        first = Position(stream.epoch, oldest) if oldest is not None else None
        if cursor is None:
            events = list(stream.events)[-limit:] if limit else []
            return Page(events, False, first, head)
        reset, after = resume_from(cursor, stream.epoch, oldest, head.offset if head else None)
        start = after + 1 - (oldest or 0)
        end = min(len(stream.events), start + limit)
        events = [stream.events[i] for i in range(max(0, start), end)]
        return Page(events, reset, first, head)

    async def read_before(self, room: str, before: Position | None, limit: int) -> list[Event]:
        stream = self._streams.get(room)
        if stream is None or not stream.events:
            return []
        events = list(stream.events)
        if before is not None:
            if before.epoch != stream.epoch:
                return []
            events = [e for e in events if e.offset < before.offset]
        return events[-limit:] if limit else []

    async def rooms(self) -> list[str]:
        return sorted(self._streams)

    async def active_rooms(self, since: int) -> dict[str, int]:
        return {room: s.last for room, s in self._streams.items() if s.last >= since}

    def watch(self, room: str) -> None:
        pass

    def unwatch(self, room: str) -> None:
        pass
