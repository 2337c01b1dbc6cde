"""Following several rooms on one connection: what the streaming transports share.

A streaming request names its rooms at the edge (`Checked.follows`): one in the
single-room form (`?room=R&lastReceived=C`), or up to `max_rooms_per_connection` in the
multi-room form (`?follow=R:C&follow=...`), so that the tabs of one browser can share
one connection. Each room is a subscription of its own into the hub and, for a socket, a
presence connection of its own: the fan-out and the presence rules are those of one
connection per room, less the sockets. Nothing is encoded per connection: an event
carries its room already; only a reset marker (made per subscriber anyway) is made again
with its room named.

In the multi-room form, a room that ends for this session (it pressed Leave there, or its
nickname there went to another session) gets a notice naming it, and the other rooms
go on:

    {"type": "left", "room": R, "error": "left" | "nickname_taken", "reason": ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from chatroom.broker import Delivery, Reset
from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.web.params import Follow
from chatroom.web.refusals import Refused, answer
from chatroom.web.saying import new_conn_id
from chatroom.web.security import Session
from chatroom.web.state import Chat

__all__ = [
    "LEFT",
    "Joined",
    "connect_rooms",
    "disconnect_rooms",
    "ended",
    "named",
    "room_refused",
]

# Why a room's subscription ended with reason "left": its session left it (the Leave
# button, on any node) or lost its nickname there while its presence had lapsed.
LEFT = Refused(410, "left", "you left the room")


def named(batch: list[Delivery], room: str) -> list[Delivery]:
    """A batch of one room for a multi-room connection: its reset marker names the room.

    Events are passed as they are (they carry their room); a reset comes only from a
    subscriber's own read of the backend, never from the fan-out.
    """
    if not any(isinstance(item, Reset) for item in batch):
        return batch
    return [item if not isinstance(item, Reset) else Reset.at(item.oldest, room)
            for item in batch]


def room_refused(exc: LeftRoom | NicknameTaken, many: bool) -> Refused:
    """How a room the session may not follow is answered: in the multi-room form it is
    refused alone (the caller sends its notice and goes on with the others); in the
    single-room form the refusal is the request's, so `exc` is raised."""
    refused = answer(exc)
    if not many or refused is None:
        raise exc
    return refused


def ended(room: str, refused: Refused) -> bytes:
    """The notice that `room` ended for this connection (see the module's docstring)."""
    return orjson.dumps(
        {"type": "left", "room": room, "error": refused.code, "reason": refused.reason}
    )


class Joined:
    """The rooms a socket was let into, with their presence connections, and the rooms
    it was refused (multi-room form only: the single-room form refuses the request)."""

    __slots__ = ("accepted", "refused")

    def __init__(self) -> None:
        self.accepted: list[tuple[Follow, str]] = []
        self.refused: list[tuple[str, Refused]] = []


async def connect_rooms(
    chat: Chat, follows: Sequence[Follow], session: Session, many: bool
) -> Joined:
    """Make the session present in each room through a connection id of its own.

    In the multi-room form (`many`), a room this session left, or where its nickname is
    another session's, is refused alone; in the single-room form the refusal (LeftRoom,
    NicknameTaken) is raised. Anything else (BackendUnavailable) releases what was
    connected and is raised.
    """
    joined = Joined()
    try:
        for follow in follows:
            conn = new_conn_id()
            try:
                await chat.broker.connect(follow.room, session.user, session.sid, conn)
            except (LeftRoom, NicknameTaken) as exc:
                joined.refused.append((follow.room, room_refused(exc, many)))
                continue
            joined.accepted.append((follow, conn))
    except BaseException:
        await disconnect_rooms(chat, [conn for _, conn in joined.accepted])
        raise
    return joined


async def disconnect_rooms(chat: Chat, conns: Sequence[str]) -> None:
    """The socket closed: each of its rooms keeps the user present a few seconds more
    (a reload is no leave). A failure to say so is the presence expiry's to mend."""
    for conn in conns:
        try:
            await chat.broker.disconnect(conn)
        except Exception as exc:
            chat.problems.warning("backend", "presence not released: %s", exc)
