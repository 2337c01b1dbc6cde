"""Presence rules: who is in a room, as a pure table with the clock passed in.

A member is a nickname in a room, bound to one session. A member has connections
(a socket, or a poller's lease); each connection has an expiry time. A member is
present while any of its connections has not expired. Persistent connections are
re-touched on a heartbeat; a dropped one lingers briefly so that a reload or a
reconnect is not seen as leave-then-join.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LEFT_TTL", "LeftRoom", "Member", "NicknameTaken", "PresenceTable"]

# How long a session that pressed Leave stays out of a room unless it enters again.
LEFT_TTL = 24 * 3600.0


class NicknameTaken(Exception):
    """The nickname is held by another live session in this room."""

    def __init__(self, room: str, user: str) -> None:
        super().__init__(f"the nickname {user!r} is already in use in room {room!r}")
        self.room = room
        self.user = user


class LeftRoom(Exception):
    """This session left the room (the Leave button): it must enter again to rejoin.

    Without this, a poll or a socket heartbeat still in flight after the leave would
    quietly bring the member back.
    """

    def __init__(self, room: str, user: str) -> None:
        super().__init__(f"you left room {room!r}: enter it again from the welcome page")
        self.room = room
        self.user = user


@dataclass(slots=True)
class Member:
    session: str
    # connection id -> time (seconds, caller's clock) after which it no longer counts
    conns: dict[str, float] = field(default_factory=dict)

    def alive(self, now: float) -> bool:
        return any(until > now for until in self.conns.values())


class PresenceTable:
    """room -> nickname -> Member. Every method takes `now` from the caller's clock."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, Member]] = {}
        # (room, user) -> (session that pressed Leave, when)
        self._left: dict[tuple[str, str], tuple[str, float]] = {}

    def touch(
        self,
        room: str,
        user: str,
        session: str,
        conn: str,
        until: float,
        now: float,
        rejoin: bool = False,
    ) -> bool:
        """Record that `conn` keeps `user` present until `until`. True if the user just joined.

        Raises NicknameTaken when another session holds the nickname and is still present,
        and LeftRoom when this session pressed Leave here, unless it `rejoin`s (enters
        the room again through the welcome page).
        """
        members = self._rooms.setdefault(room, {})
        member = members.get(user)
        if member is not None and member.session != session and member.alive(now):
            raise NicknameTaken(room, user)
        self._check_left(room, user, session, rejoin)
        # A member stays listed until its leave is reported (expire() or leave()): one
        # that expired but was not reaped yet never left in the room's eyes, so its
        # return is no second join.
        joined = member is None
        if member is not None and member.session != session:
            if member.alive(now):
                raise NicknameTaken(room, user)
            member = None
        if member is None:
            member = Member(session)
            members[user] = member
        member.conns[conn] = max(until, member.conns.get(conn, until))
        return joined

    def _check_left(self, room: str, user: str, session: str, rejoin: bool) -> None:
        left = self._left.get((room, user))
        if left is None or left[0] != session:
            return
        if not rejoin:
            raise LeftRoom(room, user)
        del self._left[(room, user)]

    def check(self, room: str, user: str, session: str, now: float) -> None:
        """Raise NicknameTaken if another live session holds `user` in `room`, LeftRoom
        if this session left it."""
        member = self._rooms.get(room, {}).get(user)
        if member is not None and member.session != session and member.alive(now):
            raise NicknameTaken(room, user)
        self._check_left(room, user, session, rejoin=False)

    def release(self, room: str, user: str, conn: str, until: float) -> None:
        """A connection closed: it keeps counting until `until` (a short linger)."""
        member = self._rooms.get(room, {}).get(user)
        if member is not None and conn in member.conns:
            member.conns[conn] = min(member.conns[conn], until)

    def leave(self, room: str, user: str, session: str, now: float) -> bool:
        """Remove the member at once (the leave button). True if it was a member.

        One that expired but was not reaped yet counts: its leave was not reported yet.
        The session stays out of the room (LeftRoom) until it rejoins.
        """
        self._left[(room, user)] = (session, now)
        members = self._rooms.get(room, {})
        member = members.get(user)
        if member is None or member.session != session:
            return False
        del members[user]
        if not members:
            del self._rooms[room]
        return True

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop expired connections; return the (room, user) pairs that are now gone."""
        if self._left:
            self._left = {k: v for k, v in self._left.items() if now - v[1] < LEFT_TTL}
        gone: list[tuple[str, str]] = []
        for room in list(self._rooms):
            members = self._rooms[room]
            for user in list(members):
                member = members[user]
                member.conns = {c: t for c, t in member.conns.items() if t > now}
                if not member.conns:
                    del members[user]
                    gone.append((room, user))
            if not members:
                del self._rooms[room]
        return gone

    def members(self, room: str, now: float) -> list[str]:
        members = self._rooms.get(room, {})
        return sorted(user for user, m in members.items() if m.alive(now))

    def counts(self, now: float) -> dict[str, int]:
        result: dict[str, int] = {}
        for room, members in self._rooms.items():
            n = sum(1 for m in members.values() if m.alive(now))
            if n:
                result[room] = n
        return result
