"""What every handler needs, built once by the app's startup and reached by a typed key."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import jinja2
import orjson
from aiohttp import web

from chatroom.broker import Broker
from chatroom.config import Settings
from chatroom.core.presence import LeftRoom, NicknameTaken
from chatroom.core.validation import InvalidInput, validate_room
from chatroom.observability import Throttled
from chatroom.web.security import RateLimiter, Session, SessionSigner, same_origin

__all__ = [
    "TECHNIQUES",
    "Chat",
    "NoSession",
    "OpenSocket",
    "chat_key",
    "json_error",
    "require_post_allowed",
    "room_of",
]

# technique key -> label, in the order the welcome page offers them
TECHNIQUES: dict[str, str] = {
    "refresh": "Active Refresh",
    "longpolling": "Long Polling",
    "websocket": "WebSocket",
    "sse": "Server-Sent Events",
}


class OpenSocket(Protocol):
    """An open WebSocket, as the app sees it: something to close."""

    async def close(
        self, code: int = 1000, message: bytes = b"", within: float = 10.0
    ) -> None: ...


@dataclass(slots=True)
class Chat:
    settings: Settings
    broker: Broker
    signer: SessionSigner
    limiter: RateLimiter
    templates: jinja2.Environment
    # open WebSockets, closed with 1001 on shutdown
    sockets: set[OpenSocket] = field(default_factory=set)
    # open connections (WebSocket, SSE) and parked long polls, by technique
    connections: Counter[str] = field(default_factory=Counter)
    # recurring failures (a backend outage) logged once, not once per request
    problems: Throttled = field(default_factory=lambda: Throttled(logging.getLogger("chatroom")))

    def session(self, request: web.Request) -> Session | None:
        return self.signer.from_request(request)

    def require_session(self, request: web.Request) -> Session:
        """The request's session; NoSession (answered 401) when it has no valid cookie."""
        session = self.signer.from_request(request)
        if session is None:
            raise NoSession()
        return session


class NoSession(Exception):
    """The request carries no valid session cookie."""

    def __init__(self) -> None:
        super().__init__("no session: open / and pick a nickname")


chat_key = web.AppKey("chat", Chat)


def json_error(status: int, code: str, reason: str, **extra: object) -> web.Response:
    body = {"error": code, "reason": reason, **extra}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json"
    )


def room_of(request: web.Request) -> str:
    """The room named by ?room= (or the {room} path part); raises InvalidInput."""
    return validate_room(request.match_info.get("room") or request.query.get("room"))


def require_post_allowed(
    request: web.Request, chat: Chat, session: Session, token: str | None
) -> str | None:
    """Why a state-changing request must be refused (cross-site), or None if it may go on."""
    if not same_origin(request, chat.settings.allowed_origins):
        return "cross-site request refused: the Origin does not match this server"
    sent = token or request.headers.get("X-CSRF-Token")
    if sent != chat.signer.csrf(session):
        return "missing or wrong CSRF token: reload the page and try again"
    return None


# re-exported for handlers that translate these into responses
__all__ += ["InvalidInput", "LeftRoom", "NicknameTaken"]
