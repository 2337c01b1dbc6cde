"""Entering a room and saying: from a checked request to the broker, for every transport.

The order is the edge's: the values first (the text and client_id, 400 if bad: a
refused message spends nothing), then the rate limits (per session, then per client
address: 429 with the wait), then the broker stores it (which refuses a session that
is not a member of the room, has left it, or lost its nickname; the tokens it took are
given back then).
"""

from __future__ import annotations

import math
import uuid

from chatroom.broker import Draft, Stored
from chatroom.web.refusals import Refused
from chatroom.web.security import Session
from chatroom.web.state import Chat

__all__ = ["draft", "enter_room", "give_back", "new_conn_id", "say", "take_turn"]


def new_conn_id() -> str:
    return uuid.uuid4().hex


async def enter_room(chat: Chat, room: str, address: str) -> None:
    """Before a session enters a room: opening a room that does not exist yet takes a
    turn of the address's new-room rate (429 when spent); entering one that does is free.
    """
    if await chat.broker.room_exists(room):
        return
    wait = chat.limits.new_room.check(address)
    if wait > 0:
        raise Refused(
            429, "rate_limited",
            f"too many new rooms from your address: wait {math.ceil(wait)} s, or join a "
            "room in use",
            retry_after=wait,
        )


def draft(chat: Chat, session: Session, text: object, client_id: object) -> Draft:
    """The message ready to store; InvalidInput (400) for bad text or client_id."""
    return chat.broker.draft(session.user, session.sid, text, client_id)


def take_turn(chat: Chat, session: Session, address: str) -> None:
    """Spend one message of the session's and the address's rate; Refused (429) if
    either is spent. Call it only for a valid message."""
    limits = chat.limits
    wait = limits.say_session.check(session.sid)
    if wait <= 0:
        wait = limits.say_address.check(address)
        if wait > 0:
            limits.say_session.refund(session.sid)
    if wait > 0:
        # never "wait 0.0 s": a token a few milliseconds away is still a wait
        wait = max(wait, 0.1)
        raise Refused(
            429, "rate_limited", f"too many messages: wait {wait:.1f} s and send again",
            retry_after=wait,
        )


def give_back(chat: Chat, session: Session, address: str) -> None:
    """A message that took its turn was refused after all: it spends nothing."""
    chat.limits.say_session.refund(session.sid)
    chat.limits.say_address.refund(address)


async def say(
    chat: Chat, session: Session, address: str, room: str, text: object, client_id: object
) -> Stored:
    """Store one message; answers once it is durable. Raises Refused or a domain refusal
    (InvalidInput, NicknameTaken, LeftRoom, NotMember, BackendUnavailable)."""
    message = draft(chat, session, text, client_id)
    take_turn(chat, session, address)
    try:
        stored = await chat.broker.say_many(room, session.user, session.sid, [message])
    except BaseException:
        give_back(chat, session, address)
        raise
    return stored[0]
