"""Sessions (signed cookies), CSRF tokens, origin checks and per-session rate limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from chatroom.core.ratelimit import TokenBucket

__all__ = [
    "COOKIE",
    "RateLimiter",
    "Session",
    "SessionSigner",
    "same_origin",
]

COOKIE = "chatroom_session"


@dataclass(frozen=True, slots=True)
class Session:
    """Who the server says a browser is: a random session id and its nickname."""

    sid: str
    user: str


class SessionSigner:
    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"chatroom-session\0" + secret).digest()

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, session: Session) -> str:
        payload = base64.urlsafe_b64encode(
            orjson.dumps({"sid": session.sid, "user": session.user})
        ).rstrip(b"=")
        return f"{payload.decode()}.{self._mac(payload)}"

    def verify(self, value: str | None) -> Session | None:
        if not value or "." not in value:
            return None
        payload, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(self._mac(payload.encode()), mac):
            return None
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            data = orjson.loads(raw)
            return Session(str(data["sid"]), str(data["user"]))
        except (ValueError, KeyError, TypeError):
            return None

    def csrf(self, session: Session) -> str:
        """A token only pages this server rendered for this session can hold."""
        return self._mac(b"csrf\0" + session.sid.encode())

    def new_session(self, user: str) -> Session:
        return Session(secrets.token_urlsafe(16), user)

    def from_request(self, request: web.Request) -> Session | None:
        return self.verify(request.cookies.get(COOKIE))


def same_origin(request: web.Request, allowed: tuple[str, ...] = ()) -> bool:
    """True unless the request carries an Origin that is neither this host nor allowed.

    Browsers send Origin on every cross-site POST and WebSocket handshake; a
    request without one is not from another site's page (curl, a test client).
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site", "same-origin") in (
            "same-origin",
            "none",
        )
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


class RateLimiter:
    """A token bucket per session; idle buckets are dropped so memory stays bounded."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._swept = clock()

    def check(self, key: str) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds to wait."""
        now = self._clock()
        if now - self._swept > 60:
            self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
        return bucket.take(now)

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {
            k: b for k, b in self._buckets.items() if now - b.updated < full_after
        }
        self._swept = now
