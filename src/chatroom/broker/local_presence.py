"""Presence kept in this process: right for backends one process owns (memory, sqlite)."""

from __future__ import annotations

import time
from collections.abc import Callable

from chatroom.core.presence import PresenceTable

__all__ = ["LocalPresence"]


class LocalPresence:
    """The Presence protocol over a PresenceTable, with an injectable monotonic clock."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._table = PresenceTable()
        self._clock = clock or time.monotonic

    async def touch(
        self, room: str, user: str, session: str, conn: str, ttl: float, rejoin: bool = False
    ) -> bool:
        now = self._clock()
        return self._table.touch(room, user, session, conn, now + ttl, now, rejoin)

    async def check(self, room: str, user: str, session: str) -> None:
        self._table.check(room, user, session, self._clock())

    async def release(self, room: str, user: str, conn: str, linger: float) -> None:
        self._table.release(room, user, conn, self._clock() + linger)

    async def leave(self, room: str, user: str, session: str) -> bool:
        return self._table.leave(room, user, session, self._clock())

    async def expire(self) -> list[tuple[str, str]]:
        return self._table.expire(self._clock())

    async def members(self, room: str) -> list[str]:
        return self._table.members(room, self._clock())

    async def counts(self) -> dict[str, int]:
        return self._table.counts(self._clock())
