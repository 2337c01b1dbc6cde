"""Presence rules: who is in a room, as a pure table with the clock passed in.

A member is a nickname in a room, bound to one session. Its key is the nickname's
skeleton (core.validation.skeleton), so names that look alike ('victim', 'Victim', or
'victim' with a Cyrillic U+0456 for its i) are one name: while one is held by a live
session, the others are refused. What members() and the join/leave reports show is the
name the session chose.

A member has connections (a socket, or a poller's lease); each connection has an expiry
time. A member is present (live) while any of its connections has not expired.
Persistent connections are re-touched on a heartbeat; a dropped one lingers briefly so
that a reload or a reconnect is not seen as leave-then-join.

Leave is a fact about the session, kept per (room, session): no other session's action
can clear it, whatever name it holds. Only the same session entering the room again
through the welcome page (`rejoin`) does.

A session may speak in a room only as a live member of it (NotMember otherwise). A
member whose connections all expired but whose leave the reaper has not reported yet
is listed by no one (members(), counts()) and is not live: it may not speak until a
poll, a socket or the welcome page makes it present again (then without a second join).

The same session entering again under a look-alike of its own name ('alice', then
'Alice') keeps its place: it holds that skeleton, so there is no NicknameTaken and no
second join. Entering through the welcome page (`rejoin`) shows the new spelling from
then on; polls and heartbeats never change the name shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatroom.core.validation import skeleton

__all__ = [
    "LEFT_TTL", "LeftRoom", "Member", "NicknameTaken", "NotMember", "PresenceTable",
]

# How long a session that pressed Leave stays out of a room unless it enters again.
LEFT_TTL = 24 * 3600.0


class NicknameTaken(Exception):
    """The nickname (or one that looks like it) is held by another live session here."""

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


class NotMember(Exception):
    """This session is not a live member of the room, so it may not speak there.

    It never entered the room, or its presence there ran out (no poll, no open socket
    for longer than the presence time).
    """

    def __init__(self, room: str, user: str) -> None:
        super().__init__(
            f"you are not in room {room!r} (or your presence there ran out): "
            "enter it from the welcome page"
        )
        self.room = room
        self.user = user


@dataclass(slots=True)
class Member:
    session: str
    # the name shown: the one the session chose (the key is its skeleton)
    name: str
    # connection id -> time (seconds, caller's clock) after which it no longer counts
    conns: dict[str, float] = field(default_factory=dict)

    def alive(self, now: float) -> bool:
        return any(until > now for until in self.conns.values())


class PresenceTable:
    """room -> skeleton of the nickname -> Member. Every method takes `now` from the
    caller's clock."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, Member]] = {}
        # (room, session that pressed Leave there) -> when
        self._left: dict[tuple[str, str], float] = {}

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

        Raises NicknameTaken when another session holds the nickname, or a look-alike of
        it, and is still present; LeftRoom when this session pressed Leave here, unless it
        `rejoin`s (enters the room again through the welcome page). A refused touch
        changes nothing: a rejoin that finds the name taken stays out.
        """
        key = skeleton(user)
        members = self._rooms.get(room)
        member = members.get(key) if members is not None else None
        if member is not None and member.session != session and member.alive(now):
            raise NicknameTaken(room, user)
        if not rejoin and (room, session) in self._left:
            raise LeftRoom(room, user)
        if rejoin:
            self._left.pop((room, session), None)
        if members is None:
            members = self._rooms[room] = {}
        # A member stays listed until its leave is reported (expire() or leave()): one
        # that expired but was not reaped yet never left in the room's eyes, so its
        # return is no second join.
        joined = member is None
        if member is None or member.session != session:
            member = members[key] = Member(session, user)
        elif rejoin:
            member.name = user
        member.conns[conn] = max(until, member.conns.get(conn, until))
        return joined

    def check(self, room: str, user: str, session: str, now: float) -> None:
        """May this session speak as `user` in `room` now? Raise if not.

        NicknameTaken if another live session holds the nickname or a look-alike; else
        LeftRoom if this session left the room (rather than NotMember: it tells why);
        else NotMember if this session is not a live member (never entered, or ran out).
        """
        member = self._rooms.get(room, {}).get(skeleton(user))
        live = member is not None and member.alive(now)
        if live and member is not None and member.session != session:
            raise NicknameTaken(room, user)
        if (room, session) in self._left:
            raise LeftRoom(room, user)
        if not live:
            raise NotMember(room, user)

    def release(self, room: str, user: str, conn: str, until: float) -> None:
        """A connection closed: it keeps counting until `until` (a short linger)."""
        member = self._rooms.get(room, {}).get(skeleton(user))
        if member is not None and conn in member.conns:
            member.conns[conn] = min(member.conns[conn], until)

    def leave(self, room: str, user: str, session: str, now: float) -> bool:
        """This session leaves the room (the leave button). True if it was the member.

        The session stays out of the room (LeftRoom) until it rejoins, whether or not it
        was the member. Only the member's own session removes it, at once; one that
        expired but was not reaped yet counts: its leave was not reported yet.
        """
        self._left[(room, session)] = now
        members = self._rooms.get(room, {})
        key = skeleton(user)
        member = members.get(key)
        if member is None or member.session != session:
            return False
        del members[key]
        if not members:
            del self._rooms[room]
        return True

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop expired connections; return the (room, name) of members now gone."""
        if self._left:
            self._left = {k: t for k, t in self._left.items() if now - t < LEFT_TTL}
        gone: list[tuple[str, str]] = []
        for room in list(self._rooms):
            members = self._rooms[room]
            for key in list(members):
                member = members[key]
                member.conns = {c: t for c, t in member.conns.items() if t > now}
                if not member.conns:
                    del members[key]
                    gone.append((room, member.name))
            if not members:
                del self._rooms[room]
        return gone

    def members(self, room: str, now: float) -> list[str]:
        """The names of the live members, sorted."""
        members = self._rooms.get(room, {})
        return sorted(m.name for m in members.values() if m.alive(now))

    def counts(self, now: float) -> dict[str, int]:
        result: dict[str, int] = {}
        for room, members in self._rooms.items():
            n = sum(1 for m in members.values() if m.alive(now))
            if n:
                result[room] = n
        return result
