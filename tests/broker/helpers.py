"""Events to store in the backend tests."""

from __future__ import annotations

from chatroom.broker import Backend
from chatroom.broker.backend import Draft
from chatroom.core.events import Event, EventType

__all__ = ["ROOM", "TS", "fill", "msg", "offsets"]

TS = 1_764_115_200_123
ROOM = "lobby"


def msg(
    text: str,
    *,
    user: str = "alice",
    session: str | None = None,
    client_id: str | None = None,
    kind: EventType = "message",
) -> Draft:
    return Draft(kind, user, TS, text if kind == "message" else None, session, client_id)


async def fill(backend: Backend, n: int, room: str = ROOM) -> list[Event]:
    """Append n messages one after another; their events, oldest first."""
    return [(await backend.append(room, msg(f"m{i}"))).event for i in range(1, n + 1)]


def offsets(events: list[Event]) -> list[int]:
    return [e.offset for e in events]
