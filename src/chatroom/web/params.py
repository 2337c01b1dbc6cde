"""Total parsers for the values a request carries in its query string and path.

Each takes the text as the client sent it (None when absent) and answers a typed value,
or raises InvalidInput(field, reason), which the app answers 400 `invalid` with the
reason and the field. Nothing else escapes them: no ValueError, no conversion of a
5,000-digit number, no Unicode digit ("²", Arabic-Indic "٣") taken for an ASCII one.
They are pure: no request, no I/O, so any edge handler (or a test) can call them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from chatroom.core.events import Position, parse_cursor, read_cursor
from chatroom.core.validation import MAX_ROOM, InvalidInput

__all__ = [
    "MAX_CURSOR",
    "MAX_DIGITS",
    "Follow",
    "RoomKey",
    "TooManyRooms",
    "cursor_param",
    "follow_param",
    "int_param",
    "room_key_param",
    "room_param",
    "single",
]

# The most digits a whole number may have: 18 always fit in a signed 64-bit integer.
MAX_DIGITS = 18
# The longest event id: an epoch of at most 32 characters, "-", an offset of 18 digits.
MAX_CURSOR = 32 + 1 + MAX_DIGITS

_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_ROOM = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ROOM}}}")
# a room name as the server writes it (lower-cased)
_LISTED = re.compile(rf"[a-z0-9_-]{{1,{MAX_ROOM}}}")
_ROOM_REASON = f"room names are 1 to {MAX_ROOM} characters of a-z, 0-9, '_' and '-'"


def single(values: Sequence[str], name: str) -> str | None:
    """The one value a parameter was given; None when absent. Twice is ambiguous: refused.

    For aiohttp: `single(request.query.getall(name, []), name)`.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput(name, f"{name} is given {len(values)} times: give it once")
    return values[0]


def int_param(raw: str | None, *, name: str, default: int, lo: int, hi: int) -> int:
    """A whole number from `lo` to `hi` written in ASCII digits; `default` when absent.

    Present but empty (`?limit=`), a sign, a fraction, other digits than 0-9, more than
    MAX_DIGITS digits or a number outside lo..hi: InvalidInput naming `name`.
    """
    if not 0 <= lo <= hi < 10**MAX_DIGITS:
        raise ValueError(f"int_param bounds must be 0 <= lo <= hi < 10**{MAX_DIGITS}")
    if raw is None:
        return default
    if _DIGITS.fullmatch(raw):
        value = int(raw)
        if lo <= value <= hi:
            return value
    raise InvalidInput(name, f"{name} must be a whole number from {lo} to {hi}")


def cursor_param(raw: str | None, name: str) -> Position | None:
    """An event id handed back as a cursor; None when absent or empty (no cursor).

    Anything that is not an id this server could have made is InvalidInput: an API
    client is told its cursor is wrong, not answered an empty page. (The streaming
    transports read cursors with core.events.read_cursor instead, which answers a
    malformed one with a reset: a reconnecting client never loses its place.)
    """
    if not raw:
        return None
    position = parse_cursor(raw) if len(raw) <= MAX_CURSOR else None
    if position is None:
        raise InvalidInput(name, f"{name} must be an event id this server gave out")
    return position


def room_param(raw: str | None, name: str = "room", default: str | None = None) -> str:
    """A room name, lower-cased: 1 to 64 of A-Z, a-z, 0-9, '_' and '-', nothing around.

    Absent or empty: `default` if one is given, InvalidInput otherwise. Unlike
    core.validation.validate_room it trims nothing: what a schema says is what passes.
    """
    if not raw:
        if default is not None:
            return default
        raise InvalidInput(name, _ROOM_REASON)
    if not _ROOM.fullmatch(raw):
        raise InvalidInput(name, _ROOM_REASON)
    return raw.lower()


class RoomKey(NamedTuple):
    """Where a page of the room listing ended: its last room's member count and name.

    Written `<members>.<name>` (e.g. `3.lobby`): the `next` cursor of GET /api/rooms.
    """

    members: int
    name: str

    def __str__(self) -> str:
        return f"{self.members}.{self.name}"


def room_key_param(raw: str | None, name: str) -> RoomKey | None:
    """A room listing cursor (`<members>.<name>`, see RoomKey); None when absent or empty."""
    if not raw:
        return None
    members, dot, room = raw.partition(".")
    if dot and _DIGITS.fullmatch(members) and _LISTED.fullmatch(room):
        return RoomKey(int(members), room)
    raise InvalidInput(name, f"{name} must be the `next` cursor of a previous page")


class Follow(NamedTuple):
    """A room a streaming connection follows, and the cursor it resumes from there
    (None: the room's archive first)."""

    room: str
    cursor: Position | None


class TooManyRooms(InvalidInput):
    """A connection asked to follow more rooms than one connection may."""


def follow_param(values: Sequence[str], limit: int, name: str = "follow") -> tuple[Follow, ...]:
    """The rooms of a multi-room connection: each value `R` or `R:C`, a room name and
    the cursor to resume from there (an event id; absent or empty: the archive).

    The room is checked as room_param checks it; two values naming one room are
    InvalidInput; more than `limit` values TooManyRooms. The cursor is read as the
    streaming transports read one (core.events.read_cursor): a malformed cursor is an
    unknown one, answered with a reset, so a reconnecting client never loses its place.
    """
    if len(values) > limit:
        raise TooManyRooms(
            name,
            f"one connection follows at most {limit} rooms, not {len(values)}: "
            "follow the others on another connection",
        )
    follows: list[Follow] = []
    rooms: set[str] = set()
    for value in values:
        raw_room, _, raw_cursor = value.partition(":")
        room = room_param(raw_room, name)
        if room in rooms:
            raise InvalidInput(name, f"room {room!r} is followed twice: follow it once")
        rooms.add(room)
        follows.append(Follow(room, read_cursor(raw_cursor)))
    return tuple(follows)
