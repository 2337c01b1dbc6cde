"""No input from a client makes a 5xx or a traceback: every route, over raw sockets.

A real server (SQLite in a temporary directory, on 127.0.0.1) gets requests written
byte by byte, as a hostile client would: no client library tidies the request line,
the headers, the cookies or the body. Hypothesis writes them, for every route the
router holds (`ROUTES` is read from the app, so a new route is fuzzed without a change
here), with and without a valid session cookie, the session's CSRF token and the
page's Origin, so that the generated values get past the early checks:

- query strings: our keys (room, user, demo, lastReceived, before, limit, error, cursor,
  follow) and others, repeated, with percent-encoded invalid UTF-8 (`%ED%A0%80`, `%FF`), NUL,
  bidi and zero-width characters, combining marks, 4-byte emoji, thousands of digits;
- bodies: forms and JSON with message / csrf / client_id fields holding all of that,
  deep nesting, JSON that is not an object, wrong Content-Type and charset, and
  Content-Length that is short, long, missing, doubled or chunked (well or badly);
- cookies: random bytes, non-ASCII, very long, many, our cookie name with forged values;
- headers: Host, Origin, Sec-Fetch-Site, X-Forwarded-*, X-CSRF-Token, Last-Event-ID,
  Upgrade / Connection / Sec-WebSocket-*, Expect, Range, with hostile values (the
  X-Forwarded-* headers are believed when the request comes from 127.0.0.2, which the
  server trusts as a proxy);
- WebSocket frames after a real upgrade with a valid session: text and binary, control
  frames, fragments, JSON and not JSON, invalid UTF-8, huge and deeply nested JSON.

Every answer: below 500; a refusal (4xx) carries a JSON body with `error` and `reason`,
or an HTML page whose error paragraph says why; the server logs no record at ERROR or
above and no traceback (caplog, which sees aiohttp's `aiohttp.server` logger too).
A WebSocket closes, if it closes, with a valid close code.

And a valid message (1 to 2000 characters after trimming, no NUL, valid Unicode) said
through the long-poll POST (form and JSON), the Active Refresh form and the WebSocket
(object and bare string) is stored as its text trimmed, the same bytes, as the history
API, a long poll and two WebSockets read it back.

The runs are derandomized (`derandomize=True`, no example database): CI sees the same
requests every time. `CHATROOM_FUZZ_ROUTE_EXAMPLES` sets the examples per route (the
other tests scale with it); with `-s` the file prints how many examples it ran and how
many routes it covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chatroom.app import create_app
from chatroom.config import Settings
from chatroom.core.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
)
from chatroom.web.security import COOKIE
from chatroom.web.state import TECHNIQUES
from tests.strategies import (
    cookie_values,
    header_values,
    hostile_text,
    json_bodies,
    numbers,
    valid_texts,
    wire_values,
)
from tests.support import (
    SECRET,
    UNLIMITED,
    RawWebSocket,
    Server,
    client_frame,
    eventually,
    publish,
    serving,
)

DEFAULT_EXAMPLES = 6
EXAMPLES = int(os.environ.get("CHATROOM_FUZZ_ROUTE_EXAMPLES", DEFAULT_EXAMPLES))
# the WebSocket and valid-message tests run this many times as many (one test each,
# where the route fuzz is 42 tests)
MANY = 8
# pytest-timeout's 300 s per test, grown with the examples asked for
TIMEOUT = pytest.mark.timeout(300 + EXAMPLES * MANY * 2)

# the room the fuzzing sessions are in; the room the valid messages are said in
ROOM = "fuzz"
SAY_ROOM = "says"
# the address the server believes X-Forwarded-* from
PROXY = "127.0.0.2"
# how long one exchange may take before the server counts as hung
WITHIN = 15.0
PHASES = [Phase.explicit, Phase.generate] + (
    [Phase.shrink] if os.environ.get("CHATROOM_FUZZ_SHRINK") else []
)


def app_routes() -> list[tuple[str, str]]:
    """(method, route) of every route the app's router holds."""
    app = create_app(Settings(backend="memory://", secret=SECRET))
    return sorted(
        {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
        }
    )


ROUTES = app_routes()
RESOURCES = sorted({path for _, path in ROUTES})


# --- what was run -----------------------------------------------------------------------


@dataclass
class Tally:
    examples: Counter[str] = field(default_factory=Counter)
    # (method, route) pairs a generated request was sent to
    routes: set[tuple[str, str]] = field(default_factory=set)
    # resources that got a method they do not declare
    other_methods: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    # refusals answered in plain text (by aiohttp, before or outside the app)
    plain: Counter[tuple[int, bytes]] = field(default_factory=Counter)
    ws_closes: Counter[int | None] = field(default_factory=Counter)
    stored: Counter[str] = field(default_factory=Counter)
    # refusals the app made: (status, error code), "page" for a page
    codes: Counter[tuple[int, str]] = field(default_factory=Counter)
    # 429s by content type
    limited: Counter[str] = field(default_factory=Counter)


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    t = TALLY
    print(
        f"\nroute fuzz: {sum(t.examples.values())} examples "
        f"({', '.join(f'{k} {v}' for k, v in sorted(t.examples.items()))}); "
        f"routes covered {len(t.routes)}/{len(ROUTES)}; resources sent an undeclared "
        f"method {len(t.other_methods)}/{len(RESOURCES)}"
    )
    print(f"  statuses: {dict(sorted(t.statuses.items()))}")
    print(f"  the app's refusals: {dict(sorted(t.codes.items()))}")
    print(f"  plain-text refusals (aiohttp's own): {dict(t.plain)}")
    print(f"  WebSocket closes: {dict(t.ws_closes)}")
    print(f"  valid messages stored, by way: {dict(t.stored)}")
    print(f"  429s, by content type: {dict(t.limited)}")


def tally_route(test: str, method: str, route: str) -> None:
    TALLY.examples[test] += 1
    TALLY.routes.add((method, route))


# --- servers and sessions ---------------------------------------------------------------


class Late(logging.Handler):
    """Records at ERROR, or with a traceback, whenever they come: also after the example
    that caused them was over (a stream's handler ends later), and at shutdown."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
async def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """Rate limits lifted; long polls and SSE heartbeats short, so that a stream whose
    client went is let go soon."""
    late = Late()
    root = logging.getLogger()
    root.addHandler(late)
    try:
        async with serving(
            tmp_path_factory.mktemp("routefuzz"),
            **UNLIMITED,
            longpoll_timeout=0.3,
            sse_heartbeat=0.5,
            trusted_proxies=(PROXY,),
        ) as server:
            await publish(server, ROOM, ["seed one", "seed two"])
            yield server
    finally:
        root.removeHandler(late)
    assert [f"{r.name}: {r.getMessage()}" for r in late.records] == []


@pytest.fixture(scope="module")
async def say_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """Room for the longest valid text in any encoding: 2000 four-byte characters
    percent-encoded in a form are 24,000 bytes, over the 16 KB default."""
    async with serving(
        tmp_path_factory.mktemp("says"), **UNLIMITED, max_body=64 * 1024, longpoll_timeout=5
    ) as server:
        yield server


class LogWatch:
    """The server's log records at ERROR or above, or with a traceback, since `mark()`."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        caplog.set_level(logging.WARNING)
        self._seen = 0

    def mark(self) -> None:
        self._seen = len(self.caplog.records)

    def problems(self) -> list[str]:
        records = self.caplog.records[self._seen :]
        self._seen += len(records)
        return [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            + (f"\n{logging.Formatter().formatException(r.exc_info)}" if r.exc_info else "")
            for r in records
            if r.levelno >= logging.ERROR or r.exc_info
        ]

    def assert_quiet(self, what: object) -> None:
        problems = self.problems()
        assert not problems, f"the server logged, for {what!r}:\n" + "\n".join(problems)


@dataclass
class Actor:
    user: str
    cookie: str
    csrf: str


_names = itertools.count()


async def new_actor(server: Server, room: str) -> Actor:
    """A nickname claimed in `room` through GET /demo, as a browser does it."""
    user = f"fz{next(_names)}"
    answer = await exchange(
        server.port,
        f"GET /demo?user={user}&room={room}&demo=longpolling HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert answer.status == 302, answer
    cookie = answer.cookie(COOKIE)
    assert cookie is not None, answer
    session = server.chat.signer.verify(cookie)
    assert session is not None
    return Actor(user, cookie, server.chat.signer.csrf(session))


# --- raw HTTP/1.1 -----------------------------------------------------------------------


@dataclass
class Answer:
    """What came back: status None when the connection closed without an answer."""

    status: int | None
    head: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> bytes | None:
        key = name.lower().encode()
        return next((v for k, v in self.headers if k.lower() == key), None)

    def cookie(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == b"set-cookie" and value.startswith(name.encode() + b"="):
                return value.split(b";", 1)[0].split(b"=", 1)[1].decode()
        return None

    @property
    def content_type(self) -> str:
        value = self.header("Content-Type") or b""
        return value.split(b";", 1)[0].strip().lower().decode("latin-1")


async def _read_head(reader: asyncio.StreamReader) -> Answer:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    assert parts[0].startswith(b"HTTP/1."), raw
    headers = [line.partition(b":") for line in lines[1:]]
    return Answer(int(parts[1]), raw, [(k.strip(), v.strip()) for k, _, v in headers])


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def exchange(
    port: int,
    data: bytes,
    *,
    head_only: bool = False,
    eof: bool = False,
    source: str = "127.0.0.1",
) -> Answer:
    """Send `data` as it is and read one answer (its body, or the start of a stream).

    `eof`: half-close after sending (a body shorter than its Content-Length is all
    there is). The connection is then drained until the server closes it (it was asked
    to), so that whatever the server does with the request has been done.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        async with asyncio.timeout(WITHIN):
            writer.write(data)
            if eof:
                writer.write_eof()
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                answer = await _read_head(reader)
                # interim answers (100 Continue) before the real one
                while answer.status is not None and 100 <= answer.status < 200 and (
                    answer.status != 101
                ):
                    answer = await _read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return Answer(None)
            status = answer.status
            length = answer.header("Content-Length")
            if head_only or status in (101, 204, 304):
                pass
            elif answer.content_type == "text/event-stream":
                # a stream: its first bytes, then go away
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        answer.body = await reader.read(4096)
            elif (answer.header("Transfer-Encoding") or b"").lower() == b"chunked":
                answer.body = await _read_chunked(reader)
            elif length is not None:
                answer.body = await reader.readexactly(int(length))
            else:
                answer.body = await reader.read()
            if status != 101 and answer.content_type != "text/event-stream":
                # the server closes (asked to, or after a refusal); a keep-alive it was
                # talked into is left after a moment
                with contextlib.suppress(TimeoutError, ConnectionError):
                    async with asyncio.timeout(0.3):
                        while await reader.read(65536):
                            pass
            return answer
    except TimeoutError:
        raise AssertionError(f"no answer within {WITHIN} s to {data[:2000]!r}") from None
    finally:
        transport = writer.transport
        transport.abort()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


# --- what an answer must be -------------------------------------------------------------

_ALERT = re.compile(rb'<p class="error" id="error" role="alert">([^<]+)</p>')
# what aiohttp answers in plain text itself, before the edge runs: a request it could
# not parse (400), no route (404), a method the route does not take (405), an Expect
# other than 100-continue (417)
_AIOHTTP_PLAIN = {400, 404, 405, 417}


def check_answer(answer: Answer, what: object, *, head_only: bool = False, path: str = "") -> None:
    status = answer.status
    assert status is not None, f"no answer to {what!r}"
    TALLY.statuses[status] += 1
    assert status < 500, f"{status} for {what!r}:\n{answer.head!r}\n{answer.body[:2000]!r}"
    assert b"Traceback" not in answer.body, (what, answer.body)
    if status in (301, 302, 303, 307, 308):
        # a redirect stays on this site, whatever the request said
        location = answer.header("Location") or b""
        assert location.startswith(b"/"), (what, location)
        assert not location.startswith((b"//", b"/\\")), (what, location)
    if not 400 <= status < 500 or head_only:
        return
    kind = answer.content_type
    if kind == "application/json":
        refusal = orjson.loads(answer.body)
        assert isinstance(refusal, dict), (what, answer.body)
        TALLY.codes[(status, str(refusal.get("error")))] += 1
        error, reason = refusal.get("error"), refusal.get("reason")
        assert isinstance(error, str), (what, refusal)
        assert error, (what, refusal)
        assert isinstance(reason, str), (what, refusal)
        assert reason.strip(), (what, refusal)
    elif kind == "text/html":
        alert = _ALERT.search(answer.body)
        TALLY.codes[(status, "page")] += 1
        assert alert is not None, f"a {status} page that says no reason for {what!r}"
        assert alert.group(1).strip(), f"a {status} page with an empty reason for {what!r}"
    elif kind == "text/plain" and status in _AIOHTTP_PLAIN and answer.body.strip():
        TALLY.plain[(status, answer.body.split(b"\n", 1)[0][:40])] += 1
    elif path == "/static" and status in (403, 404, 416):
        # aiohttp's file handler: a directory (403, "403: Forbidden"), no such file (404,
        # an empty body), a Range the file cannot satisfy (416, said in Content-Range)
        TALLY.plain[(status, b"static: " + answer.body[:30])] += 1
    else:
        raise AssertionError(f"a {status} refusal that names no reason for {what!r}: {answer}")


# --- requests ---------------------------------------------------------------------------

# Markers put in generated requests, filled in when the request is sent.
M_PORT, M_COOKIE, M_CSRF, M_LAST = b"@@PORT@@", b"@@COOKIE@@", b"@@CSRF@@", b"@@LAST@@"

def rare(draw: st.DrawFn) -> bool:
    """One time in ten. (Not on 0: Hypothesis starts from the simplest choices, and the
    simplest request should be the ordinary one.)"""
    return draw(st.integers(0, 9)) == 7


QUERY_KEYS = (
    "room", "user", "demo", "lastReceived", "before", "limit", "error", "cursor", "follow",
)


def _rooms() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(ROOM.encode()),
        st.just(ROOM.encode()),
        st.just(ROOM.encode()),
        st.sampled_from([b"lobby", b"FUZZ", b"%20fuzz%20", b"", b"a" * 64, b"a" * 65, b"r-1_x"]),
        wire_values(),
    )


def _query_values() -> dict[str, st.SearchStrategy[bytes]]:
    cursors = st.one_of(
        st.just(M_LAST),
        st.just(M_LAST + b"0"),
        st.sampled_from([b"x-1", b"-1", b"abc-", b"a" * 40 + b"-1", b"A-99999999999999999999"]),
        numbers().map(lambda n: quote(n).encode()),
        wire_values(),
    )
    return {
        "room": _rooms(),
        "user": st.one_of(st.sampled_from([b"alice", b"b%C3%B6b", b"x" * 33]), wire_values()),
        "demo": st.one_of(st.sampled_from([t.encode() for t in TECHNIQUES]), wire_values()),
        "error": st.one_of(
            st.sampled_from([b"nickname", b"taken", b"left", b"cross_site", b"session"]),
            wire_values(),
        ),
        "cursor": st.one_of(st.sampled_from([b"3.lobby", b"0.fuzz", b"1."]), wire_values()),
        "lastReceived": cursors,
        "before": cursors,
        # a room of a multi-room connection, and its cursor
        "follow": st.one_of(
            _rooms(),
            st.tuples(_rooms(), st.sampled_from([b":", b"%3A", b"::"]), cursors).map(
                lambda parts: b"".join(parts)
            ),
        ),
        "limit": st.one_of(numbers().map(lambda n: quote(n).encode()), wire_values()),
        "x": wire_values(),
    }


QUERY_VALUES = _query_values()


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    pairs: list[bytes] = []
    if draw(st.integers(0, 3)) != 3:
        # usually the fuzzing room, so that the values after it are read
        pairs.append(b"room=" + draw(_rooms()))
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.one_of(st.sampled_from(QUERY_KEYS), st.just("x")))
        raw_key = key.encode() if key != "x" else draw(wire_values())
        value = draw(QUERY_VALUES[key])
        pairs.append(raw_key + draw(st.sampled_from([b"=", b"=", b"", b"=="])) + value)
    if rare(draw):
        # one key, many times
        pairs.extend([b"limit=1"] * draw(st.integers(2, 200)))
    return b"&".join(pairs)


def _path_for(route: str) -> st.SearchStrategy[bytes]:
    if route == "/static":
        return st.one_of(
            st.sampled_from(
                [b"/static/chat.js", b"/static/style.css", b"/static/favicon.svg",
                 b"/static/../app.py", b"/static/%2e%2e/app.py", b"/static/..%2fapp.py",
                 b"/static/", b"/static/nope.js", b"/static/chat.js/", b"/static//etc/passwd",
                 b"/static/%00", b"/static/templates"]
            ),
            wire_values().map(lambda v: b"/static/" + v),
        )
    if "{room}" in route:
        before, after = route.split("{room}")
        return _rooms().map(lambda r: before.encode() + r + after.encode())
    if "{path}" in route:
        return st.one_of(
            st.sampled_from([b"/api/", b"/api/x", b"/api/rooms/", b"/api/rooms/a/b/c"]),
            wire_values().map(lambda v: b"/api/" + v),
        )
    return st.just(route.encode())


def _mutated(path: bytes) -> st.SearchStrategy[bytes]:
    """The path a little off: a route it is not (a 404), or one it is, written oddly."""
    return st.sampled_from(
        [path + b"/", path.upper(), b"/" + path, path + b"%00", path.replace(b"/", b"/./", 1),
         path.replace(b"o", b"%6F", 1)]
    )


HEADER_NAMES = (
    "Host", "Origin", "Sec-Fetch-Site", "X-Forwarded-For", "X-Forwarded-Proto",
    "X-Forwarded-Host", "X-CSRF-Token", "Last-Event-ID", "Upgrade", "Connection",
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions", "Accept", "Accept-Encoding", "Accept-Language", "Expect",
    "Range", "If-Modified-Since", "If-None-Match", "If-Range", "Referer", "User-Agent",
    "Content-Type", "Content-Encoding", "Cookie", "Forwarded", "X-Real-IP",
)


def _header_value_for(name: str) -> st.SearchStrategy[bytes]:
    good: dict[str, list[bytes]] = {
        "Host": [b"127.0.0.1:" + M_PORT, b"localhost:" + M_PORT, b"LOCALHOST", b"[::1]:" + M_PORT],
        "Origin": [b"http://127.0.0.1:" + M_PORT, b"http://localhost:" + M_PORT],
        "X-CSRF-Token": [M_CSRF],
        "Last-Event-ID": [M_LAST, M_LAST + b"1"],
        "Cookie": [COOKIE.encode() + b"=" + M_COOKIE],
        "Sec-WebSocket-Key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
        "X-Forwarded-Host": [b"127.0.0.1:" + M_PORT],
        "Content-Encoding": [b"gzip", b"deflate", b"br", b"zstd", b"identity", b"gzip, gzip"],
        "Expect": [b"100-continue", b"100-Continue"],
        "Connection": [b"close", b"keep-alive", b"Upgrade", b"close, Upgrade"],
        "Upgrade": [b"websocket", b"h2c", b"WebSocket"],
    }
    return st.one_of(st.sampled_from(good.get(name, [b"x"])), header_values())


@dataclass
class Plan:
    """A request with markers; `wire()` makes its bytes once the markers are known."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str
    delta: int
    chunks: int
    source: str

    def needs_actor(self) -> bool:
        text = self.target + b"".join(k + v for k, v in self.headers) + self.body
        return M_COOKIE in text or M_CSRF in text

    def wire(self, marks: dict[bytes, bytes]) -> tuple[bytes, bool]:
        """The request's bytes, and whether to half-close after them."""

        def fill(value: bytes) -> bytes:
            for marker, real in marks.items():
                value = value.replace(marker, real)
            return value

        body = fill(self.body)
        lines = [self.method + b" " + fill(self.target) + b" HTTP/1.1"]
        lines += [fill(k) + b": " + fill(v) for k, v in self.headers]
        eof = False
        framing = self.framing if body else "none"
        if framing == "exact":
            lines.append(b"Content-Length: %d" % len(body))
        elif framing == "short":
            lines.append(b"Content-Length: %d" % max(0, len(body) - self.delta))
        elif framing == "long":
            lines.append(b"Content-Length: %d" % (len(body) + self.delta))
            eof = True
        elif framing == "both":
            lines.append(b"Content-Length: %d" % len(body))
            lines.append(b"Transfer-Encoding: chunked")
        elif framing in ("chunked", "chunked_bad"):
            lines.append(b"Transfer-Encoding: chunked")
        if framing == "chunked":
            size = max(1, len(body) // self.chunks)
            pieces = [body[i : i + size] for i in range(0, len(body), size)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        return b"\r\n".join(lines) + b"\r\n\r\n" + body, eof


_FORM = b"application/x-www-form-urlencoded"
_JSON = b"application/json"
CONTENT_TYPES = (
    _FORM, _JSON, _FORM + b"; charset=utf-8", _JSON + b"; charset=UTF-8",
    _FORM + b"; charset=latin-1", _JSON + b"; charset=utf-16", b"text/plain",
    b"multipart/form-data; boundary=x",
    b"APPLICATION/JSON", b"application/json; charset=\xff", b"", b";", b"application/jsonx",
    b"application/x-www-form-urlencoded; charset=utf-8; charset=latin-1",
)


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    pairs: list[bytes] = []
    fields = draw(st.lists(st.sampled_from(["message", "csrf", "client_id", "x"]), max_size=5))
    for name in fields:
        if name == "csrf":
            value = draw(st.one_of(st.just(M_CSRF), st.just(M_CSRF), wire_values()))
        elif name == "x":
            name = quote(draw(hostile_text(max_size=8)).encode("utf-8", "surrogatepass"))
            value = draw(wire_values())
        else:
            value = draw(wire_values())
        pairs.append(name.encode() + b"=" + value)
    if rare(draw):
        pairs.extend([b"a=1"] * draw(st.integers(20, 100)))
    return b"&".join(pairs)


def _json_fields() -> st.SearchStrategy[dict[str, Any]]:
    text: st.SearchStrategy[Any] = st.one_of(
        hostile_text(), numbers(), st.none(), st.integers(), st.lists(st.integers(), max_size=2)
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "message": text,
            "client_id": text,
            "csrf": st.one_of(st.just(M_CSRF.decode()), hostile_text()),
        },
    )


def bodies() -> st.SearchStrategy[tuple[bytes | None, bytes]]:
    """(Content-Type, body)."""
    return st.one_of(
        st.tuples(st.just(_FORM), form_bodies()),
        st.tuples(st.just(_JSON), json_bodies(_json_fields())),
        st.tuples(
            st.one_of(st.none(), st.sampled_from(CONTENT_TYPES)),
            st.one_of(form_bodies(), json_bodies(_json_fields()), st.binary(max_size=200)),
        ),
        # over the body limit
        st.tuples(st.just(_FORM), st.integers(16 * 1024, 20 * 1024).map(lambda n: b"m" * n)),
    )


_CONTROL = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"


def _clean(value: bytes, limit: int = 2000) -> bytes:
    """A header value aiohttp's parser takes (no control bytes, not too long): so that
    the request reaches the app."""
    return value.translate(None, _CONTROL)[:limit]


OTHER_METHODS = (
    b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"PROPFIND", b"get", b"Post", b"BREW",
    b"M-SEARCH", b"GET", b"POST", b"HEAD", b"G\xc3\x89T", b"GE T", b"\x16\x03\x01",
)


@st.composite
def plans(draw: st.DrawFn, method: str, route: str) -> Plan:
    """A request to `route`. Mostly one the app gets to read (its method, headers that
    parse, a body that is framed right), with hostile values; a quarter are wild:
    any method, any header bytes, broken framing."""
    wild = draw(st.integers(0, 3)) == 3
    clean = (lambda v, limit=2000: v) if wild else _clean
    raw_method = method.encode()
    if wild and draw(st.booleans()):
        raw_method = draw(st.sampled_from(OTHER_METHODS))
    elif rare(draw):
        raw_method = draw(st.sampled_from(OTHER_METHODS[:6]))
    query = draw(queries())
    path = draw(_path_for(route))
    if rare(draw):
        path = draw(_mutated(path))
    target = path + (b"?" + query if query or draw(st.booleans()) else b"")
    auth = draw(st.sampled_from(["full", "full", "full", "none", "cookie", "forged"]))
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"127.0.0.1:" + M_PORT)]
    cookies: list[bytes] = []
    if auth in ("cookie", "full"):
        cookies.append(COOKIE.encode() + b"=" + M_COOKIE)
    elif auth == "forged":
        cookies.append(COOKIE.encode() + b"=" + clean(draw(cookie_values()), 3000))
    if auth == "full":
        where = draw(st.sampled_from(["header", "body", "both"]))
        if where != "body":
            headers.append((b"X-CSRF-Token", M_CSRF))
        origin = draw(st.sampled_from(["same", "none", "fetch"]))
        if origin == "same":
            headers.append((b"Origin", b"http://127.0.0.1:" + M_PORT))
        elif origin == "fetch":
            headers.append((b"Sec-Fetch-Site", b"same-origin"))
    else:
        where = "none"
    # more cookies around ours: random, many, long
    extra = draw(
        st.lists(
            st.tuples(st.one_of(st.sampled_from([b"a", b"b", COOKIE.encode()]), header_values()),
                      cookie_values()),
            max_size=3,
        )
    )
    cookies += [
        clean(k.replace(b"=", b"").replace(b";", b""), 100) + b"=" + clean(v, 3000)
        for k, v in extra
    ]
    if rare(draw):
        cookies += [b"c%d=%d" % (i, i) for i in range(draw(st.integers(50, 300 if wild else 150)))]
    if cookies:
        order = draw(st.permutations(range(len(cookies))))
        headers.append((b"Cookie", b"; ".join(cookies[i] for i in order)))
    # headers with hostile values, some replacing the good ones
    for name in draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=4)):
        if name == "Expect" and not wild:
            # (any other Expect is answered 417 before the app sees the request)
            value = draw(st.sampled_from([b"100-continue", b"100-Continue"]))
        else:
            value = clean(draw(_header_value_for(name)))
        if not wild or draw(st.booleans()):
            headers = [(k, v) for k, v in headers if k.lower() != name.lower().encode()]
        headers.append((name.encode(), value))
    if wild and draw(st.booleans()):
        headers.append((draw(header_values()).replace(b":", b"") or b"X", draw(header_values())))
    # a body: always for POST, sometimes for the others
    body = b""
    framing = "exact"
    if raw_method == b"POST" or draw(st.integers(0, 5)) == 5:
        content_type, body = draw(bodies())
        if where in ("body", "both") and content_type in (_FORM, None):
            body = (b"csrf=" + M_CSRF + b"&" + body) if body else b"csrf=" + M_CSRF
        elif where in ("body", "both") and content_type == _JSON and body.startswith(b"{"):
            body = b'{"csrf": "' + M_CSRF + b'", ' + body[1:] if body != b"{}" else (
                b'{"csrf": "' + M_CSRF + b'"}'
            )
        if content_type is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            headers.append((b"Content-Type", content_type))
        framings = ["exact"] * 6 + ["chunked"]
        if wild:
            framings += ["short", "long", "none", "both", "chunked_bad"]
        framing = draw(st.sampled_from(framings))
    if wild or not any(k.lower() == b"connection" for k, _ in headers):
        headers.append((b"Connection", b"close"))
    if wild and draw(st.booleans()):
        # (the request line and headers in their order; Connection may be overridden)
        headers = draw(st.permutations(headers))
    return Plan(
        method=raw_method,
        target=target,
        headers=headers,
        body=body,
        framing=framing,
        delta=draw(st.integers(1, 50)),
        chunks=draw(st.integers(1, 4)),
        source=draw(st.sampled_from(["127.0.0.1", "127.0.0.1", PROXY])),
    )


async def marks_for(server: Server, plan: Plan) -> dict[bytes, bytes]:
    marks = {M_PORT: str(server.port).encode()}
    _, head = await server.broker.recent(ROOM)
    marks[M_LAST] = str(head).encode() if head else b""
    if plan.needs_actor():
        actor = await new_actor(server, ROOM)
        marks[M_COOKIE] = actor.cookie.encode()
        marks[M_CSRF] = actor.csrf.encode()
    return marks


async def send(server: Server, plan: Plan) -> tuple[Answer, bytes]:
    data, eof = plan.wire(await marks_for(server, plan))
    answer = await exchange(
        server.port, data, head_only=plan.method == b"HEAD", eof=eof, source=plan.source
    )
    return answer, data


def _settings(examples: int) -> Any:
    return settings(
        max_examples=max(1, examples),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        # Shrinking against a live server takes minutes (and explaining, which traces
        # every line on Python 3.11, longer); a failure shows its exact request anyway.
        # CHATROOM_FUZZ_SHRINK=1 shrinks it.
        phases=PHASES,
    )


# --- every route ------------------------------------------------------------------------


@TIMEOUT
@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{m} {r}" for m, r in ROUTES])
@_settings(EXAMPLES)
@given(data=st.data())
async def test_no_request_makes_a_5xx_or_a_traceback(
    fuzz_server: Server,
    caplog: pytest.LogCaptureFixture,
    method: str,
    route: str,
    data: st.DataObject,
) -> None:
    logs = LogWatch(caplog)
    logs.mark()
    plan = data.draw(plans(method, route), label="request")
    answer, wire = await send(fuzz_server, plan)
    if plan.method.decode("latin-1") != method:
        TALLY.other_methods.add(route)
    tally_route("routes", method, route)
    if answer.status is None:
        # only a client that broke its own framing and hung up gets no answer
        assert plan.framing == "long", wire
        assert plan.body, wire
    else:
        check_answer(answer, wire, head_only=plan.method == b"HEAD", path=route)
    await asyncio.sleep(0)
    logs.assert_quiet(wire)


def test_the_routes_fuzzed_are_the_app_s() -> None:
    # ROUTES is read from the router; it holds (at least) every route DESIGN.md lists
    promised = {
        ("GET", "/"), ("GET", "/demo"), ("POST", "/refresh/room"),
        ("GET", "/longpolling/room/messages"), ("POST", "/longpolling/room/messages"),
        ("GET", "/websocket/room/socket"), ("GET", "/sse/room/events"), ("GET", "/api/rooms"),
        ("GET", "/api/rooms/{room}/history"), ("GET", "/api/rooms/{room}/presence"),
        ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
        *(("GET", f"/{t}/room") for t in TECHNIQUES),
        *(("POST", f"/{t}/room/leave") for t in TECHNIQUES),
    }
    assert promised <= set(ROUTES)
    # and HEAD beside every GET (aiohttp adds them; they run the same handlers)
    assert {("HEAD", r) for m, r in ROUTES if m == "GET"} <= set(ROUTES)


# --- WebSocket frames after a real upgrade ----------------------------------------------


def _dumps(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


_ANY_TEXT: st.SearchStrategy[Any] = st.one_of(
    hostile_text(), valid_texts(), numbers(), st.none(), st.integers(), st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.none(), max_size=2),
)


def _text_payloads() -> st.SearchStrategy[bytes]:
    message = st.fixed_dictionaries(
        {}, optional={"text": _ANY_TEXT, "client_id": _ANY_TEXT, "type": hostile_text(),
                      "room": hostile_text(), "user": hostile_text()}
    )
    return st.one_of(
        st.tuples(message, st.booleans()).map(lambda m: _dumps(*m)),
        st.tuples(st.one_of(valid_texts(), hostile_text()), st.booleans()).map(
            lambda m: _dumps(*m)
        ),
        hostile_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=64),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 3000).map(lambda n: b'{"text":' * n + b'"x"' + b"}" * n),
        st.sampled_from([b"", b"null", b"[]", b"{}", b'"\\ud800"', b'{"text": "\\u0000"}',
                         b'{"text": "a"}' * 2, b"\xef\xbb\xbf\"bom\""]),
        # over the message limit
        st.integers(16 * 1024 - 8, 17 * 1024).map(lambda n: b'"' + b"z" * n + b'"'),
    )


@st.composite
def ws_frames(draw: st.DrawFn) -> bytes:
    """One frame, or a fragmented message, as a client could write it."""
    kind = draw(
        st.sampled_from(["text"] * 6 + ["fragments", "binary", "ping", "pong", "close", "odd"])
    )
    if kind == "text":
        return client_frame(draw(_text_payloads()), OP_TEXT)
    if kind == "fragments":
        payload = draw(_text_payloads())
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=1, max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        frames = [client_frame(pieces[0], OP_TEXT, fin=False)]
        for piece in pieces[1:-1]:
            frames.append(client_frame(piece, OP_CONTINUATION, fin=False))
            if draw(st.booleans()):
                frames.append(client_frame(b"mid", OP_PING))
        frames.append(client_frame(pieces[-1], OP_CONTINUATION, fin=True))
        return b"".join(frames)
    if kind == "binary":
        return client_frame(draw(st.binary(max_size=64)), OP_BINARY)
    if kind in ("ping", "pong"):
        payload = draw(st.one_of(st.binary(max_size=125), st.binary(min_size=126, max_size=200)))
        return client_frame(payload, OP_PING if kind == "ping" else OP_PONG)
    if kind == "close":
        code = draw(st.one_of(st.sampled_from([1000, 1001, 1005, 1006, 1015, 3000, 4999, 5000, 0,
                                               999, 1004, 2999]), st.integers(0, 65535)))
        reason = draw(st.one_of(hostile_text(max_size=10).map(
            lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=10)))
        payload = draw(st.sampled_from([b"", b"\x03", struct.pack("!H", code) + reason]))
        return client_frame(payload[:125], OP_CLOSE)
    # reserved opcodes and bits, unmasked frames, a continuation with nothing to continue
    return draw(
        st.sampled_from(
            [
                client_frame(b"x", 0x3), client_frame(b"x", 0xB),
                client_frame(b'"x"', OP_TEXT, rsv=0x40),
                client_frame(b'"x"', OP_TEXT, masked=False), client_frame(b"x", OP_CONTINUATION),
                client_frame(b"", OP_PING, fin=False), client_frame(b'"x"', OP_TEXT, form=127),
            ]
        )
    )


_CLOSE_CODES = set(range(1000, 1015)) - {1004, 1005, 1006} | set(range(3000, 5000))


async def read_all(ws: RawWebSocket, within: float) -> tuple[list[bytes], int | None, bool]:
    """Text payloads until the close frame or the end: (texts, close code, closed)."""
    texts: list[bytes] = []
    try:
        async with asyncio.timeout(within):
            while True:
                try:
                    opcode, payload = await ws.read_frame()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return texts, None, True
                if opcode == OP_TEXT:
                    texts.append(payload)
                elif opcode == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    return texts, code, True
    except TimeoutError:
        return texts, None, False


@TIMEOUT
@_settings(EXAMPLES * MANY)
@given(frames=st.lists(ws_frames(), min_size=1, max_size=6), goodbye=st.booleans())
async def test_no_websocket_frame_makes_a_traceback(
    fuzz_server: Server, caplog: pytest.LogCaptureFixture, frames: list[bytes], goodbye: bool
) -> None:
    logs = LogWatch(caplog)
    logs.mark()
    server = fuzz_server
    actor = await new_actor(server, ROOM)
    ws = await RawWebSocket.connect(
        server, f"/websocket/room/socket?room={ROOM}", actor.cookie,
        origin=f"http://127.0.0.1:{server.port}",
    )
    try:
        assert ws.status == 101, ws.head
        ws.writer.write(b"".join(frames))
        if goodbye:
            ws.send_frame(OP_CLOSE, struct.pack("!H", 1000))
        with contextlib.suppress(ConnectionError):
            await ws.writer.drain()
        texts, code, closed = await read_all(ws, 5.0 if goodbye else 0.3)
    finally:
        await ws.close()
    TALLY.examples["websocket"] += 1
    TALLY.ws_closes[code] += 1
    if goodbye:
        assert closed, "no close after the client's close frame"
    assert code is None or code in _CLOSE_CODES, code
    for text in texts:
        frame = orjson.loads(text)
        assert isinstance(frame, dict), frame
        assert isinstance(frame.get("type"), str), frame
        if frame["type"] == "error":
            assert frame.get("error"), frame
            assert frame.get("reason"), frame
            assert frame["error"] != "internal", frame
    await asyncio.sleep(0.05)
    logs.assert_quiet(frames)


# --- a valid message is stored exactly --------------------------------------------------


class Speaker:
    """One session saying valid messages every way, and two sockets reading them back."""

    def __init__(self, server: Server, actor: Actor, ws: RawWebSocket, listener: RawWebSocket,
                 listener_actor: Actor) -> None:
        self.server = server
        self.actor = actor
        self.ws = ws
        self.listener = listener
        self.listener_actor = listener_actor
        self.last_id = ""

    async def next_message(self, ws: RawWebSocket) -> tuple[dict[str, Any], bytes]:
        """The next message event the speaker said, as a socket got it."""
        async with asyncio.timeout(WITHIN):
            while True:
                opcode, payload = await ws.read_frame()
                assert opcode == OP_TEXT, (opcode, payload)
                frame = orjson.loads(payload)
                assert frame.get("type") != "error", frame
                if frame.get("type") == "message" and frame.get("user") == self.actor.user:
                    return frame, payload


@pytest.fixture
async def speaker(say_server: Server) -> AsyncIterator[Speaker]:
    server = say_server
    listener_actor = await new_actor(server, SAY_ROOM)
    actor = await new_actor(server, SAY_ROOM)
    origin = f"http://127.0.0.1:{server.port}"
    path = f"/websocket/room/socket?room={SAY_ROOM}"
    listener = await RawWebSocket.connect(server, path, listener_actor.cookie, origin=origin)
    ws = await RawWebSocket.connect(server, path, actor.cookie, origin=origin)
    assert (listener.status, ws.status) == (101, 101)
    spk = Speaker(server, actor, ws, listener, listener_actor)
    _, head = await server.broker.recent(SAY_ROOM)
    spk.last_id = str(head) if head else ""
    try:
        yield spk
    finally:
        await ws.close()
        await listener.close()


def _post(server: Server, path: str, actor: Actor, content_type: bytes, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Origin: http://127.0.0.1:{server.port}\r\nCookie: {COOKIE}={actor.cookie}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode() + b"Content-Type: " + content_type + b"\r\n\r\n" + body


def _get(server: Server, path: str, actor: Actor | None = None) -> bytes:
    cookie = f"Cookie: {COOKIE}={actor.cookie}\r\n" if actor else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{cookie}Connection: close\r\n\r\n"
    ).encode()


def _form(text: str) -> bytes:
    return quote(text.encode("utf-8", "surrogatepass"), safe="").encode("ascii")


WAYS = ("longpoll_form", "longpoll_json", "refresh", "websocket_object", "websocket_string")


@TIMEOUT
@_settings(EXAMPLES * MANY)
@given(text=valid_texts(), way=st.sampled_from(WAYS), with_id=st.booleans())
async def test_a_valid_message_is_stored_exactly_as_sent_trimmed(
    speaker: Speaker, caplog: pytest.LogCaptureFixture, text: str, way: str, with_id: bool
) -> None:
    logs = LogWatch(caplog)
    logs.mark()
    server, actor = speaker.server, speaker.actor
    expected = text.strip()
    encoded = orjson.dumps(expected)
    cid = f"c{next(_names)}" if with_id else None
    path = f"/longpolling/room/messages?room={SAY_ROOM}"
    said: dict[str, Any] | None = None
    if way == "longpoll_form":
        body = b"message=" + _form(text) + b"&csrf=" + actor.csrf.encode()
        if cid:
            body += b"&client_id=" + cid.encode()
        answer = await exchange(server.port, _post(server, path, actor, _FORM, body))
        assert answer.status == 200, answer
        said = orjson.loads(answer.body)
    elif way == "longpoll_json":
        body = orjson.dumps({"message": text, "csrf": actor.csrf, "client_id": cid})
        answer = await exchange(server.port, _post(server, path, actor, _JSON, body))
        assert answer.status == 200, answer
        said = orjson.loads(answer.body)
    elif way == "refresh":
        body = b"message=" + _form(text) + b"&csrf=" + actor.csrf.encode()
        answer = await exchange(
            server.port,
            _post(server, f"/refresh/room?room={SAY_ROOM}", actor, _FORM, body),
        )
        assert answer.status == 303, answer
    else:
        payload: object = text if way == "websocket_string" else {"text": text, "client_id": cid}
        speaker.ws.send_frame(OP_TEXT, orjson.dumps(payload))
        await speaker.ws.writer.drain()
    # the speaker's own socket and the listener's get it, the same bytes
    own, own_raw = await speaker.next_message(speaker.ws)
    heard, heard_raw = await speaker.next_message(speaker.listener)
    assert own == heard
    assert encoded in own_raw
    assert encoded in heard_raw
    event_id = own["id"]
    if said is not None:
        assert said == own
    assert own["text"] == expected
    # the history API and a long poll from the previous event read it back
    hist = await exchange(server.port, _get(server, f"/api/rooms/{SAY_ROOM}/history?limit=1"))
    assert hist.status == 200, hist
    assert encoded in hist.body
    (stored,) = orjson.loads(hist.body)["events"]
    polled = await exchange(
        server.port,
        _get(server, f"{path}&lastReceived={speaker.last_id}", speaker.listener_actor),
    )
    assert polled.status == 200, polled
    assert encoded in polled.body
    (poll_event,) = orjson.loads(polled.body)
    assert stored == poll_event == own
    assert stored["id"] == event_id
    assert stored["text"].encode() == expected.encode()
    speaker.last_id = event_id
    TALLY.examples["valid messages"] += 1
    TALLY.stored[way] += 1
    logs.assert_quiet(text)


# --- under the limits ------------------------------------------------------------------


@dataclass
class Strict:
    server: Server
    actor: Actor


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[Strict]:
    """The default rate limits, a small cap on one session's streams, and a session
    (claimed once: claiming nicknames is rate-limited too)."""
    async with serving(tmp_path, max_connections_per_session=2, longpoll_timeout=0.5) as server:
        yield Strict(server, await new_actor(server, "limits"))


ACTIONS = ("say_form", "say_json", "refresh", "demo", "new_room", "stream")


@TIMEOUT
@_settings(max(2, EXAMPLES // 2))
@given(actions=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(1, 25),
                                  hostile_text(max_size=12)), min_size=1, max_size=4))
async def test_limits_answer_4xx_with_a_reason(
    strict: Strict,
    caplog: pytest.LogCaptureFixture,
    actions: list[tuple[str, int, str]],
) -> None:
    """Bursts past the rate limits and the stream cap: 429 with Retry-After and a reason,
    never a 5xx."""
    logs = LogWatch(caplog)
    logs.mark()
    server, actor = strict.server, strict.actor
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for action, count, text in actions:
            for i in range(count):
                if action == "stream":
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    held.append((reader, writer))
                    writer.write(_get(server, "/sse/room/events?room=limits", actor))
                    answer = await _read_head(reader)
                    if answer.status != 200:
                        length = int(answer.header("Content-Length") or b"0")
                        answer.body = await reader.readexactly(length)
                elif action == "demo":
                    answer = await exchange(
                        server.port,
                        _get(server, f"/demo?user=l{next(_names)}&room=limits&demo=sse"),
                    )
                elif action == "new_room":
                    answer = await exchange(
                        server.port,
                        _get(server, f"/longpolling/room?room=new{next(_names)}", actor),
                    )
                else:
                    message = f"{text} {i}"
                    if action == "say_json":
                        body = _dumps({"message": message, "csrf": actor.csrf}, True)
                        kind = _JSON
                    else:
                        body = b"message=" + _form(message) + b"&csrf=" + actor.csrf.encode()
                        kind = _FORM
                    path = ("/refresh/room?room=limits" if action == "refresh"
                            else "/longpolling/room/messages?room=limits")
                    answer = await exchange(server.port, _post(server, path, actor, kind, body))
                check_answer(answer, (action, i))
                if answer.status == 429:
                    TALLY.limited[answer.content_type] += 1
                    if answer.content_type == "application/json":
                        # what a script needs to wait the right time
                        assert int(answer.header("Retry-After") or b"0") >= 1, answer
                        assert orjson.loads(answer.body)["retry_after"] >= 0, answer
                    else:
                        # a page says it in words
                        assert b"wait" in answer.body, answer
        TALLY.examples["limits"] += 1
    finally:
        for _, writer in held:
            writer.transport.abort()
    await asyncio.sleep(0.05)
    logs.assert_quiet(actions)


async def test_the_server_is_still_up_after_the_fuzz(fuzz_server: Server) -> None:
    health = await exchange(
        fuzz_server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert health.status == 200
    # every stream the fuzz opened gave its place under the caps back
    await eventually(lambda: fuzz_server.chat.edge.gate.open == 0, within=10)
