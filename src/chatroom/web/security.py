"""Sessions (signed, timed cookies), CSRF tokens, and the total parsers of the headers
that security decisions read: Host, Origin, X-Forwarded-*.

Signing is itsdangerous's: a cookie carries its issue time and is refused past
`max_age`; old secrets still verify (rotation) while the newest signs. Every parser
here is total: it returns a value or None (or raises BadHeader), never anything else,
whatever bytes a client sent.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from itsdangerous import BadData, Signer, URLSafeTimedSerializer

from chatroom.core.ratelimit import TokenBucket

__all__ = [
    "COOKIE",
    "BadHeader",
    "HostPort",
    "Networks",
    "RateLimiter",
    "Session",
    "SessionSigner",
    "client_address",
    "parse_host",
    "parse_origin",
]

COOKIE = "chatroom_session"

# Longest cookie value and CSRF token looked at; longer ones are not ours.
_MAX_COOKIE = 4096
_MAX_TOKEN = 256
# What a cookie value or token of ours is made of (itsdangerous's URL-safe alphabet).
_TOKEN = re.compile(r"[A-Za-z0-9_\-.]+")


@dataclass(frozen=True, slots=True)
class Session:
    """Who the server says a browser is: a random session id and its nickname."""

    sid: str
    user: str


class SessionSigner:
    """Signs sessions into cookie values and CSRF tokens; `secrets` oldest first."""

    def __init__(self, secret: bytes, old: Sequence[bytes] = (), max_age: float = 30 * 86400):
        keys = [*old, secret]
        self.max_age = max_age
        self._cookies = URLSafeTimedSerializer(keys, salt="chatroom-session")
        self._csrf = Signer(keys, salt="chatroom-csrf")

    def sign(self, session: Session) -> str:
        return self._cookies.dumps({"sid": session.sid, "user": session.user})

    def verify(self, value: str | None) -> Session | None:
        """The session a cookie value carries, or None: forged, expired, or not ours."""
        if not value or len(value) > _MAX_COOKIE or not _TOKEN.fullmatch(value):
            return None
        try:
            data = self._cookies.loads(value, max_age=int(self.max_age))
        except BadData:
            return None
        if not isinstance(data, dict):
            return None
        sid, user = data.get("sid"), data.get("user")
        if not isinstance(sid, str) or not isinstance(user, str) or not sid or not user:
            return None
        return Session(sid, user)

    def csrf(self, session: Session) -> str:
        """A token only pages this server rendered for this session can hold."""
        return self._csrf.get_signature(session.sid).decode("ascii")

    def csrf_ok(self, session: Session, token: object) -> bool:
        if not isinstance(token, str) or len(token) > _MAX_TOKEN or not _TOKEN.fullmatch(token):
            return False
        return self._csrf.verify_signature(session.sid.encode(), token.encode("ascii"))

    def new_session(self, user: str) -> Session:
        return Session(secrets.token_urlsafe(16), user)


class BadHeader(ValueError):
    """A header a decision depends on is malformed: answered 400 with this reason."""


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host (lower case, IPv6 in brackets) and its port, if one was given."""

    host: str
    port: int | None


# host: a DNS name, an IPv4 address, or [IPv6]; then an optional :port
_HOST = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,252}))(?::([0-9]{1,5}))?")


def parse_host(value: str | None) -> HostPort | None:
    """A Host header (or X-Forwarded-Host), or None when it is malformed or absent."""
    if not value or len(value) > 300:
        return None
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    host, port_text = match.group(1).lower(), match.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    port = int(port_text) if port_text is not None else None
    if port is not None and not 0 < port < 65536:
        return None
    return HostPort(host.rstrip("."), port)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN = re.compile(r"(https?)://([^/?#@\s]+)", re.IGNORECASE)


def parse_origin(value: str | None) -> Origin | None:
    """An Origin header (scheme://host[:port], default port filled in), or None when it is
    "null", malformed or absent."""
    if not value or len(value) > 300:
        return None
    match = _ORIGIN.fullmatch(value.strip())
    if match is None:
        return None
    scheme = match.group(1).lower()
    hostport = parse_host(match.group(2))
    if hostport is None:
        return None
    return Origin(scheme, hostport.host, hostport.port or _DEFAULT_PORTS[scheme])


def origin_of(scheme: str, host: HostPort) -> Origin:
    """The origin a page served by this request has."""
    return Origin(scheme, host.host, host.port or _DEFAULT_PORTS.get(scheme, 80))


class Networks:
    """A set of addresses and networks (the trusted proxies)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(e, strict=False) for e in entries]

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)


def client_address(peer: str, forwarded_for: str | None, proxies: Networks) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the
    nearest address in X-Forwarded-For that is not one (a client can prepend anything,
    so the list is read from the right). Raises BadHeader for a malformed entry there."""
    if not forwarded_for or peer not in proxies:
        return peer
    if len(forwarded_for) > 2000:
        raise BadHeader("X-Forwarded-For is too long")
    address = peer
    for entry in reversed(forwarded_for.split(",")):
        candidate = entry.strip()
        try:
            address = str(ipaddress.ip_address(candidate))
        except ValueError:
            raise BadHeader("X-Forwarded-For holds something that is not an address") from None
        if address not in proxies:
            return address
    return address


class RateLimiter:
    """A token bucket per key; idle buckets are dropped so memory stays bounded."""

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

    def refund(self, key: str) -> None:
        """Give back the token just taken for `key` (what it paid for was refused)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give_back()

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {
            k: b for k, b in self._buckets.items() if now - b.updated < full_after
        }
        self._swept = now
