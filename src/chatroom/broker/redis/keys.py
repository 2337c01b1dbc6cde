"""Key names and error mapping shared by the Redis stream backend and Redis presence."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatroom.broker.backend import BackendUnavailable

__all__ = ["Keys", "text", "unavailable"]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Keys:
    """Key names; `{room}` is a hash tag, so one room's keys share a cluster slot."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.rooms = f"{prefix}rooms"
        # room -> its last activity (the greatest event timestamp, ms)
        self.activity = f"{prefix}activity"
        # set once the rooms of a version without `activity` were entered in it
        self.activity_filled = f"{prefix}activity-filled"
        self.presence_rooms = f"{prefix}presence-rooms"
        # (room, epoch) of each stream started afresh, for every reader's XREAD
        self.fresh = f"{prefix}fresh-streams"

    def base(self, room: str) -> str:
        return f"{self.prefix}{{{room}}}:"

    def stream(self, room: str) -> str:
        return self.base(room) + "stream"

    def meta(self, room: str) -> str:
        return self.base(room) + "meta"

    def said(self, room: str, session: str, client_id: str) -> str:
        return self.base(room) + f"said:{session}:{client_id}"

    def members(self, room: str) -> str:
        return self.base(room) + "members"

    def users(self, room: str) -> str:
        return self.base(room) + "users"

    def names(self, room: str) -> str:
        return self.base(room) + "names"

    def conns(self, room: str, key: str) -> str:
        return self.base(room) + f"c:{key}"

    def left(self, room: str, session: str) -> str:
        return self.base(room) + f"left:{session}"


def unavailable(exc: Exception) -> BackendUnavailable:
    if isinstance(exc, (OSError, RedisConnectionError, RedisTimeoutError)):
        return BackendUnavailable(f"redis is unreachable: {exc}")
    return BackendUnavailable(f"redis refused the request: {exc}")
