"""The request edge: every check of a request, in one order, in one place.

Each route declares what it needs with `@policy(...)`; `check_request` (a middleware)
runs the checks it asks for, always in this order, before the handler runs and so
before anything changes state:

1. host: the Host header (or a trusted proxy's X-Forwarded-Host) names this server;
   the scheme and client address are a trusted proxy's word, else the socket's;
2. origin: a request from another site's page is refused (403);
3. CSRF: a state-changing request carries its session's token (403);
4. session: a route that needs one answers 401 without a valid cookie;
5. values: the body becomes a typed form (400, 413, 415), the room a valid name (400),
   a streaming route's rooms and cursors typed ones (400; too many rooms for one
   connection: 400 too_many_rooms);
6. limits: a streaming connection takes a place under the caps (429, 503).

A refusal is raised as `Refused` and answered by `answer` from one table; nothing the
handler would change has been touched by then.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import parse_qsl

import orjson
from aiohttp import hdrs, web

from chatroom.core.events import read_cursor
from chatroom.core.validation import InvalidInput, validate_room
from chatroom.web.params import Follow, follow_param
from chatroom.web.refusals import NoSession, Refused, answer
from chatroom.web.security import (
    COOKIE,
    BadHeader,
    HostPort,
    Networks,
    Origin,
    Session,
    client_address,
    origin_of,
    parse_host,
    parse_origin,
)

__all__ = [
    "Checked",
    "ConnectionGate",
    "Edge",
    "Form",
    "Policy",
    "Refused",
    "Ticket",
    "answer",
    "checked",
    "checked_so_far",
    "policy",
    "policy_of",
]

log = logging.getLogger("chatroom")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

# a form or JSON body: field -> value (JSON values may be any JSON type)
Form = dict[str, object]


@dataclass(frozen=True, slots=True)
class Policy:
    """What a route needs checked. The default: the Host only (static files, the API)."""

    # the Host header is checked (every route but the health checks)
    host: bool = True
    # a request from another site's page is refused
    origin: bool = False
    # a state-changing request: it must carry its session's CSRF token
    csrf: bool = False
    session: Literal["none", "optional", "required"] = "none"
    # parse a form or JSON body
    body: bool = False
    # the route names a room (?room= or {room})
    room: bool = False
    # the route follows rooms from cursors: one (?room=R&lastReceived=C), or several on
    # one connection (?follow=R:C&follow=...)
    rooms: bool = False
    # with `rooms`: a Last-Event-ID header is the one room's cursor (Server-Sent Events)
    last_event_id: bool = False
    # a streaming connection of this technique, counted under the connection caps
    stream: str | None = None
    # how a refusal is shown: JSON, the welcome page, or the room page (the form kept)
    render: Literal["json", "welcome", "room"] = "json"


_DEFAULT = Policy()
_ATTR = "__chatroom_policy__"


def policy(**needs: object) -> Callable[[H], H]:
    """Declare what the edge checks before this handler runs."""
    p = Policy(**needs)  # type: ignore[arg-type]

    def mark(handler: H) -> H:
        setattr(handler, _ATTR, p)
        return handler

    return mark


@dataclass(slots=True)
class Checked:
    """What the edge established about a request, for its handler."""

    # the client's address (a trusted proxy's word for it, else the socket's)
    address: str
    scheme: str
    host: HostPort
    session: Session | None
    form: Form
    room: str
    ticket: Ticket | None
    # the request came from another site (a navigation from a link, or a cross-site form)
    cross_site: bool
    # the rooms a streaming route follows, each with its cursor (`room` is the first)
    follows: tuple[Follow, ...] = ()
    # they were asked for in the multi-room form (follow=): every room is named on the wire
    named: bool = False

    def require_session(self) -> Session:
        if self.session is None:
            raise NoSession()
        return self.session


_CHECKED = web.RequestKey("chatroom_checked", Checked)


def checked(request: web.Request) -> Checked:
    value: Checked | None = request.get(_CHECKED)
    assert value is not None, "the edge middleware did not run"
    return value


class Ticket:
    """A place under the connection caps, held until released (once)."""

    __slots__ = ("_gate", "_keys", "kept")

    def __init__(self, gate: ConnectionGate, keys: tuple[str, str]) -> None:
        self._gate = gate
        self._keys: tuple[str, str] | None = keys
        # the handler handed the ticket to something that outlives it (a WebSocket)
        self.kept = False

    def release(self) -> None:
        keys, self._keys = self._keys, None
        if keys is not None:
            self._gate._release(keys)


class ConnectionGate:
    """Caps on open streaming connections: in all, per client address, per session.

    The total is also kept `fd_reserve` below the process's open-file limit, so that
    health checks, the API and pages still get a file descriptor when it is full.
    """

    def __init__(
        self, total: int, per_address: int, per_session: int, fd_reserve: int
    ) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            total = min(total, max(1, soft - fd_reserve))
        self.total = total
        self.per_address = per_address
        self.per_session = per_session
        self.open = 0
        self._addresses: Counter[str] = Counter()
        self._sessions: Counter[str] = Counter()

    def acquire(self, address: str, session: str) -> Ticket:
        """A place for one more connection; Refused (503 or 429) when a cap is reached."""
        if self.open >= self.total:
            raise Refused(
                503, "server_full", "the server holds all the connections it can: retry soon",
                retry_after=5.0,
            )
        if self._addresses[address] >= self.per_address:
            raise Refused(
                429, "too_many_connections",
                f"too many connections from your address (at most {self.per_address})",
                retry_after=5.0,
            )
        if self._sessions[session] >= self.per_session:
            raise Refused(
                429, "too_many_connections",
                f"too many connections of this session (at most {self.per_session}): "
                "close some tabs",
                retry_after=5.0,
            )
        self.open += 1
        self._addresses[address] += 1
        self._sessions[session] += 1
        return Ticket(self, (address, session))

    def _release(self, keys: tuple[str, str]) -> None:
        address, session = keys
        self.open -= 1
        for counter, key in ((self._addresses, address), (self._sessions, session)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


class Edge:
    """The checks, with what they need from the settings, built once at startup."""

    def __init__(
        self,
        *,
        hosts: frozenset[str],
        allowed_origins: tuple[str, ...],
        proxies: Networks,
        verify_session: Callable[[str | None], Session | None],
        csrf_ok: Callable[[Session, object], bool],
        gate: ConnectionGate,
        max_rooms: int = 32,
    ) -> None:
        self.any_host = "*" in hosts
        self.hosts = hosts
        self.allowed_origins: set[Origin] = set()
        for raw in allowed_origins:
            parsed = parse_origin(raw)
            if parsed is None:
                raise ValueError(f"--allowed-origin {raw!r} is not scheme://host[:port]")
            self.allowed_origins.add(parsed)
        self.proxies = proxies
        self.verify_session = verify_session
        self.csrf_ok = csrf_ok
        self.gate = gate
        # rooms one streaming connection may follow
        self.max_rooms = max_rooms

    async def check(self, request: web.Request, p: Policy) -> Checked:
        """Run the checks `p` asks for; what is established so far is on the request
        (`checked()`) even when one refuses, for the refusal's page."""
        headers = request.headers
        done = Checked(request.remote or "", request.scheme, HostPort("", None), None, {}, "",
                       None, False)
        request[_CHECKED] = done
        # 1. host, scheme, client address
        peer = request.remote or ""
        trusted = bool(self.proxies) and peer in self.proxies
        try:
            address = client_address(peer, headers.get("X-Forwarded-For"), self.proxies)
        except BadHeader as exc:
            raise Refused(400, "bad_header", str(exc)) from None
        scheme = request.scheme
        raw_host = headers.get(hdrs.HOST)
        if trusted:
            proto = headers.get("X-Forwarded-Proto")
            if proto is not None:
                proto = proto.split(",")[0].strip().lower()
                if proto not in ("http", "https"):
                    raise Refused(400, "bad_header", "X-Forwarded-Proto is not http or https")
                scheme = proto
            raw_host = headers.get("X-Forwarded-Host") or raw_host
        host = parse_host(raw_host)
        if host is None:
            if raw_host is None and request.version < (1, 1):
                # HTTP/1.0 may leave the Host out: it asked this server, whatever its name
                host = HostPort(next(iter(sorted(self.hosts))), None)
            elif p.host:
                raise Refused(400, "bad_host", "the Host header is missing or malformed")
            else:
                host = HostPort("", None)
        if p.host and not self.any_host and host.host not in self.hosts:
            raise Refused(
                400, "bad_host",
                "this server does not answer to that Host name (see --allowed-host)",
            )
        done.address, done.scheme, done.host = address, scheme, host
        # 2. origin
        cross_site = done.cross_site = self._cross_site(request, scheme, host)
        if p.origin and cross_site:
            raise Refused(
                403, "bad_origin", "cross-site request refused: the Origin is not this server's"
            )
        # 3. CSRF (needs the session the cookie names, and the token the body carries)
        session = done.session = self._session(request) if p.session != "none" else None
        form = done.form = await parse_body(request) if p.body else {}
        if p.csrf and session is not None:
            token = form.get("csrf")
            if token is None:
                token = headers.get("X-CSRF-Token")
            if not self.csrf_ok(session, token):
                raise Refused(
                    403, "bad_csrf", "missing or wrong CSRF token: reload the page and try again"
                )
        # 4. session
        if p.session == "required" and session is None:
            raise NoSession()
        # 5. values
        if p.room:
            raw_room = request.match_info.get("room")
            if raw_room is None:
                raw_room = request.query.get("room")
            done.room = validate_room(raw_room)
        elif p.rooms:
            done.follows, done.named = self._follows(request, p)
            done.room = done.follows[0].room
        # 6. limits
        if p.stream is not None:
            assert session is not None, "a streaming route needs a session"
            done.ticket = self.gate.acquire(address, session.sid)
        return done

    def _follows(self, request: web.Request, p: Policy) -> tuple[tuple[Follow, ...], bool]:
        """The rooms a streaming request follows, and whether in the multi-room form."""
        query = request.query
        many = query.getall("follow", [])
        if many:
            if "room" in query or "lastReceived" in query:
                raise InvalidInput(
                    "follow", "give follow=R:C for each room, or room and lastReceived: not both"
                )
            return follow_param(many, self.max_rooms), True
        room = validate_room(query.get("room"))
        raw: str | None = None
        if p.last_event_id:
            # the browser's own reconnects send it: it is newer than the URL's cursor
            raw = request.headers.get("Last-Event-ID")
        return (Follow(room, read_cursor(raw or query.get("lastReceived"))),), False

    def _session(self, request: web.Request) -> Session | None:
        raw = request.headers.get(hdrs.COOKIE)
        if raw is None or COOKIE not in raw:
            return None
        try:
            value = request.cookies.get(COOKIE)
        except (ValueError, KeyError, UnicodeError):
            return None
        return self.verify_session(value)

    def _cross_site(self, request: web.Request, scheme: str, host: HostPort) -> bool:
        """True when the request comes from another site's page."""
        raw = request.headers.get(hdrs.ORIGIN)
        if raw is None:
            # Browsers send Sec-Fetch-Site on every request; a request with neither is not
            # from a browser's page (curl, a test client).
            return request.headers.get("Sec-Fetch-Site", "same-origin") not in (
                "same-origin",
                "none",
            )
        origin = parse_origin(raw)
        if origin is None:
            # "null" (a sandboxed or privacy-sensitive context) or malformed
            return True
        return origin != origin_of(scheme, host) and origin not in self.allowed_origins


# --- bodies -------------------------------------------------------------------------------

_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
# most fields a form may have
_MAX_FIELDS = 32


async def parse_body(request: web.Request) -> Form:
    """A form or JSON object body as a dict: 400 for bytes that are not one (or that
    stop short), 413 for too many (over client_max_size), 415 for another type."""
    content_type = request.content_type
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise Refused(415, "bad_charset", "send the body in UTF-8")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise Refused(413, "too_large", f"the body is too large: {exc.text}") from None
    except web.RequestPayloadError as exc:
        # bytes that are no body: a broken chunk, a Content-Encoding they are not in
        raise Refused(400, "bad_body", f"the body cannot be read: {exc}"[:300]) from None
    except ConnectionError:
        # the client went (or half-closed) before the whole body came: nobody may hear
        # this, but it is a refusal, not a server error
        raise Refused(400, "bad_body", "the body ended before its Content-Length") from None
    if not body:
        return {}
    if content_type == _FORM or hdrs.CONTENT_TYPE not in request.headers:
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(
                text, keep_blank_values=True, strict_parsing=False, encoding="utf-8",
                errors="strict", max_num_fields=_MAX_FIELDS,
            )
        except UnicodeDecodeError:
            raise Refused(400, "bad_body", "the form is not valid UTF-8") from None
        except ValueError:
            raise Refused(400, "bad_body", f"a form has at most {_MAX_FIELDS} fields") from None
        form: Form = {}
        for name, value in pairs:
            # the first of a repeated field counts
            form.setdefault(name, value)
        return form
    if content_type == _JSON:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, "bad_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise Refused(400, "bad_json", 'send a JSON object: {"message": "..."}')
        return parsed
    raise Refused(
        415, "bad_content_type", f"send {_FORM} or {_JSON}, not {content_type[:100]!r}"
    )


def policy_of(request: web.Request) -> Policy:
    handler = request.match_info.handler
    found = getattr(handler, _ATTR, None)
    return found if isinstance(found, Policy) else _DEFAULT


def checked_so_far(request: web.Request) -> Checked | None:
    """What the edge established before it refused (or all of it)."""
    value: Checked | None = request.get(_CHECKED)
    return value
