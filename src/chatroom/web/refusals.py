"""The one table from a refusal to its answer, on every transport.

A refusal is a domain exception (InvalidInput, NicknameTaken, LeftRoom, NotMember,
BackendUnavailable) or a `Refused` raised at the edge. `answer()` gives each its HTTP
status, its error code, the WebSocket close code that ends a socket it refuses (or
None: the socket gets an error frame and stays), and how long to wait before trying
again. HTTP renders it as JSON (or a page), WebSocket as an error frame or a close.
"""

from __future__ import annotations

from chatroom.broker import BackendUnavailable
from chatroom.core.presence import LeftRoom, NicknameTaken, NotMember
from chatroom.core.validation import InvalidInput
from chatroom.web.params import TooManyRooms

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_LEFT",
    "CLOSE_NICKNAME_TAKEN",
    "CLOSE_NORMAL",
    "CLOSE_NOT_MEMBER",
    "CLOSE_TOO_SLOW",
    "CLOSE_TRY_AGAIN_LATER",
    "NoSession",
    "Refused",
    "answer",
]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
# Application close codes (4000-4999 are ours to define).
CLOSE_LEFT = 4000
CLOSE_NOT_MEMBER = 4003
CLOSE_TOO_SLOW = 4008
CLOSE_NICKNAME_TAKEN = 4009


class Refused(Exception):
    """A refusal and its answer: status, code, reason, close code, wait, wrong field."""

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        retry_after: float | None = None,
        field: str | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
        # the input that was wrong, for a 400
        self.field = field
        # how a WebSocket this refuses is closed; None: an error frame, and it stays
        self.close_code = close_code


class NoSession(Refused):
    def __init__(self) -> None:
        super().__init__(401, "no_session", "no session: open / and pick a nickname")


# exception type -> (status, code, close code, retry_after); the first that matches
_TABLE: tuple[tuple[type[Exception], int, str, int | None, float | None], ...] = (
    (TooManyRooms, 400, "too_many_rooms", None, None),
    (InvalidInput, 400, "invalid", None, None),
    (NicknameTaken, 409, "nickname_taken", CLOSE_NICKNAME_TAKEN, None),
    (LeftRoom, 410, "left", CLOSE_LEFT, None),
    (NotMember, 403, "not_member", CLOSE_NOT_MEMBER, None),
    (BackendUnavailable, 503, "unavailable", CLOSE_TRY_AGAIN_LATER, 2.0),
)


def answer(exc: BaseException) -> Refused | None:
    """The answer to a refusal; None for an exception that is a bug, not a refusal."""
    if isinstance(exc, Refused):
        return exc
    for kind, status, code, close_code, retry_after in _TABLE:
        if isinstance(exc, kind):
            field = exc.field if isinstance(exc, InvalidInput) else None
            reason = exc.reason if isinstance(exc, InvalidInput) else str(exc)
            return Refused(status, code, reason, retry_after, field, close_code)
    return None
