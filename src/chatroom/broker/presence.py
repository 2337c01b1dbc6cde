"""The presence service: who is in each room, kept by this node's connections.

A socket keeps its user present while it is open (connect/disconnect, re-touched by a
heartbeat); a poller while it keeps coming by (keep_present). Transitions become join
and leave events through `announce`; the reaper reports members whose presence ran
out. Leave is sticky for the session (LeftRoom) until it enters again (claim).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from chatroom.broker.backend import Backend
from chatroom.broker.hub import Hub
from chatroom.broker.tasks import cancel_requested, stop_tasks
from chatroom.core.events import EventType
from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.observability import Throttled

__all__ = ["PresenceService"]

log = logging.getLogger("chatroom.broker")

Announce = Callable[[str, EventType, str], Awaitable[None]]


class PresenceService:
    def __init__(
        self,
        backend: Backend,
        hub: Hub,
        announce: Announce,
        *,
        presence_ttl: float = 30.0,
        linger: float = 5.0,
        reap_interval: float = 1.0,
    ) -> None:
        self.backend = backend
        self._hub = hub
        self._announce = announce
        self.presence_ttl = presence_ttl
        self.linger = linger
        self.reap_interval = reap_interval
        # connection id -> (room, user, session) for sockets kept present by heartbeat
        self._sockets: dict[str, tuple[str, str, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._problems = Throttled(log)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._reaper(), name="chatroom-presence-reaper"),
            asyncio.create_task(self._heartbeat(), name="chatroom-presence-heartbeat"),
        ]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []

    def sockets(self) -> int:
        """How many open sockets of this node keep their users present."""
        return len(self._sockets)

    async def members(self, room: str) -> list[str]:
        return await self.backend.presence.members(room)

    async def claim(self, room: str, user: str, session: str) -> None:
        """Enter `user` in `room` for this session (the welcome form), also after a Leave.

        Raises NicknameTaken if another live session holds the nickname there.
        """
        await self.keep_present(room, user, session, rejoin=True)

    async def check(self, room: str, user: str, session: str) -> None:
        """Raise as say() would: LeftRoom, NicknameTaken or NotMember."""
        await self.backend.presence.check(room, user, session)

    async def keep_present(
        self, room: str, user: str, session: str, rejoin: bool = False
    ) -> None:
        """A polling client (a long poll, a page view) came by: it stays present
        presence_ttl more seconds.

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
        self._hub.end_session(room, session)

    async def reap(self) -> None:
        """One round of the reaper: report the members whose presence ran out."""
        for room, user in await self.backend.presence.expire():
            await self._announce(room, "leave", user)

    async def beat(self) -> None:
        """One round of the heartbeat: each open socket keeps its user present."""
        for conn, (room, user, session) in list(self._sockets.items()):
            if conn not in self._sockets:
                continue  # closed while this round ran
            try:
                joined = await self.backend.presence.touch(
                    room, user, session, conn, self.presence_ttl
                )
            except (LeftRoom, NicknameTaken):
                # It pressed Leave on another node, or its presence lapsed (a long stall)
                # and another session took the name: end its subscriptions here too.
                self._sockets.pop(conn, None)
                self._hub.end_session(room, session)
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

    async def _reaper(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc
                self._problems.warning("reaper", "presence expiry failed: %s", exc)
            else:
                self._problems.recovered("reaper", "presence expiry works again")

    async def _heartbeat(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(self.presence_ttl / 3)
            await self.beat()
