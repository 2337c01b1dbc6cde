"""What every handler needs, built once by the app's startup and reached by a typed key."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import jinja2
import orjson
from aiohttp import web

from chatroom.broker import Broker
from chatroom.config import Settings
from chatroom.observability import Throttled
from chatroom.web.edge import Edge
from chatroom.web.refusals import Refused
from chatroom.web.security import RateLimiter, SessionSigner

__all__ = [
    "TECHNIQUES",
    "Chat",
    "Limits",
    "OpenSocket",
    "chat_key",
    "json_error",
    "refusal_response",
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
class Limits:
    """The rate limits, each a token bucket per key."""

    # saying, per session and per client address
    say_session: RateLimiter
    say_address: RateLimiter
    # claiming a nickname (GET /demo), per client address
    demo: RateLimiter
    # opening a room that did not exist, per client address
    new_room: RateLimiter

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(
            RateLimiter(s.rate_limit, s.rate_burst),
            RateLimiter(s.address_rate_limit, s.address_rate_burst),
            RateLimiter(s.demo_rate_limit, s.demo_rate_burst),
            RateLimiter(s.room_rate_limit, s.room_rate_burst),
        )


@dataclass(slots=True)
class Chat:
    settings: Settings
    broker: Broker
    signer: SessionSigner
    limits: Limits
    edge: Edge
    templates: jinja2.Environment
    # open WebSockets, closed with 1001 on shutdown
    sockets: set[OpenSocket] = field(default_factory=set)
    # open connections (WebSocket, SSE) and parked long polls, by technique
    connections: Counter[str] = field(default_factory=Counter)
    # recurring failures (a backend outage) logged once, not once per request
    problems: Throttled = field(default_factory=lambda: Throttled(logging.getLogger("chatroom")))


chat_key = web.AppKey("chat", Chat)


def json_error(
    status: int, code: str, reason: str, retry_after: float | None = None, **extra: object
) -> web.Response:
    body: dict[str, object] = {"error": code, "reason": reason, **extra}
    response = web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json"
    )
    if retry_after is not None:
        body["retry_after"] = round(retry_after, 2)
        response.body = orjson.dumps(body)
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def refusal_response(refused: Refused) -> web.Response:
    extra = {} if refused.field is None else {"field": refused.field}
    return json_error(
        refused.status, refused.code, refused.reason, retry_after=refused.retry_after, **extra
    )
