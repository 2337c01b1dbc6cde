"""The request edge: host, origin, CSRF, session, values, in that order, and a refused
request changes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from chatroom.web.security import COOKIE
from tests.support import (
    Server,
    cookie_of,
    history,
    login,
    new_client,
    press_leave,
    say_lp,
    serving,
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(tmp_path) as srv:
        yield srv


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_client() as c:
        yield c


async def raw_request(server: Server, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (no client library to tidy them); the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1]


async def members(client: aiohttp.ClientSession, server: Server, room: str) -> list[str]:
    async with client.get(f"{server.url}/api/rooms/{room}/presence") as response:
        body = await response.json()
    result: list[str] = body["members"]
    return result


# --- host -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", [b"evil.example", b"evil.example:80", b"127.0.0.1.evil.example", b"[::1", b"a b"]
)
async def test_a_host_this_server_does_not_answer_to_gets_400(
    server: Server, host: bytes
) -> None:
    # DNS rebinding: a name that now points at 127.0.0.1 is not this server's name
    status, body = await raw_request(
        server, b"GET /api/rooms HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert status == 400
    assert b"bad_host" in body


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
async def test_the_bound_names_are_answered(server: Server, host: str) -> None:
    status, _ = await raw_request(
        server,
        f"GET /api/rooms HTTP/1.1\r\nHost: {host}:{server.port}\r\nConnection: close\r\n\r\n"
        .encode(),
    )
    assert status == 200


async def test_health_checks_answer_whatever_the_host(server: Server) -> None:
    status, _ = await raw_request(
        server, b"GET /healthz HTTP/1.1\r\nHost: 10.1.2.3\r\nConnection: close\r\n\r\n"
    )
    assert status == 200


async def test_allowed_hosts_replace_the_default(tmp_path: Path) -> None:
    async with serving(tmp_path, allowed_hosts=("chat.example",)) as srv:
        ok, _ = await raw_request(
            srv, b"GET /api/rooms HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n"
        )
        refused, _ = await raw_request(
            srv, b"GET /api/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
    assert (ok, refused) == (200, 400)


# --- origin -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://[",  # urlsplit raises on this one
        "null",
        "http://evil.example",
        "https://127.0.0.1:{port}",  # the right host, the wrong scheme
        "http://127.0.0.1:1",  # the right host, the wrong port
        "http://127.0.0.1:{port}/path",
        "ftp://127.0.0.1:{port}",
        "http://\u0661\u0662\u0667.0.0.1:{port}",
        "http://user@127.0.0.1:{port}",
    ],
)
async def test_a_foreign_or_malformed_origin_is_403_and_changes_nothing(
    server: Server, client: aiohttp.ClientSession, origin: str
) -> None:
    page = await login(client, server, "alice", demo="longpolling")
    async with client.post(
        f"{server.url}/longpolling/room/messages",
        params={"room": "lobby"},
        json={"message": "hello", "csrf": page.csrf},
        headers={"Origin": origin.format(port=server.port)},
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"] == "bad_origin"
    assert [e for e in await history(client, server) if e["type"] == "message"] == []


async def test_the_page_s_own_origin_is_accepted(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="longpolling")
    for origin in (f"http://127.0.0.1:{server.port}", f"HTTP://LOCALHOST:{server.port}"):
        async with client.post(
            f"{server.url}/longpolling/room/messages",
            params={"room": "lobby"},
            json={"message": "hello", "csrf": page.csrf},
            headers={"Origin": origin, "Host": origin.split("//")[1].lower()},
        ) as response:
            assert response.status == 200, await response.text()


async def test_forwarded_proto_is_believed_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    for trusted, expected in (((), 403), (("127.0.0.1",), 200)):
        async with serving(tmp_path, trusted_proxies=trusted) as srv, new_client() as c:
            page = await login(c, srv, "alice", demo="longpolling")
            async with c.post(
                f"{srv.url}/longpolling/room/messages",
                params={"room": "lobby"},
                json={"message": "over https", "csrf": page.csrf},
                headers={
                    "Origin": f"https://127.0.0.1:{srv.port}",
                    "X-Forwarded-Proto": "https",
                },
            ) as response:
                assert response.status == expected, await response.text()


# --- a refused request changes nothing --------------------------------------------------


@pytest.mark.parametrize("what", ["csrf", "origin"])
async def test_a_post_refused_for_csrf_or_origin_does_not_enter_the_room(
    server: Server, client: aiohttp.ClientSession, what: str
) -> None:
    page = await login(client, server, "alice", room="lobby", demo="refresh")
    headers = {"Origin": "http://evil.example"} if what == "origin" else {}
    csrf = page.csrf if what == "origin" else "forged"
    for path in ("/refresh/room", "/longpolling/room/messages", "/refresh/room/leave"):
        async with client.post(
            f"{server.url}{path}",
            params={"room": "elsewhere"},
            data={"message": "hi", "csrf": csrf},
            headers=headers,
            allow_redirects=False,
        ) as response:
            assert response.status == 403, path
    assert await members(client, server, "elsewhere") == []
    assert await history(client, server, room="elsewhere") == []
    # nor did the refused leave take alice out of the room she is in
    assert await members(client, server, "lobby") == ["alice"]


async def test_refused_messages_spend_no_rate(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="longpolling")
    for bad in ["", "   ", "x" * 2001, None, 7]:
        for _ in range(3):
            async with client.post(
                f"{server.url}/longpolling/room/messages",
                params={"room": "lobby"},
                json={"message": bad, "csrf": page.csrf},
            ) as response:
                assert response.status == 400
    # fifteen refused; the burst of ten is still whole
    for i in range(10):
        await say_lp(client, server, page.csrf, f"good {i}")


async def test_another_session_of_the_same_name_cannot_undo_a_leave(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", room="lobby", demo="longpolling")
    await press_leave(client, server, page.csrf)
    async with client.get(
        f"{server.url}/longpolling/room/messages", params={"room": "lobby"}
    ) as response:
        assert response.status == 410
    # mallory mints "alice" in another room and presses Leave in alice's room
    async with new_client() as mallory:
        other = await login(mallory, server, "alice", room="elsewhere", demo="longpolling")
        async with mallory.post(
            f"{server.url}/longpolling/room/leave",
            params={"room": "lobby"},
            data={"csrf": other.csrf},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
    async with client.get(
        f"{server.url}/longpolling/room/messages", params={"room": "lobby"}
    ) as response:
        assert response.status == 410


async def test_a_session_cannot_speak_in_a_room_it_never_entered(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", room="lobby", demo="longpolling")
    async with client.post(
        f"{server.url}/longpolling/room/messages",
        params={"room": "never-entered"},
        json={"message": "sneaky", "csrf": page.csrf},
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"] == "not_member"
    assert await history(client, server, room="never-entered") == []


# --- bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/x-www-form-urlencoded", b"message=\xff\xfe&csrf=x", 400),
        ("application/x-www-form-urlencoded", b"message=%ff%fe&csrf=x", 400),
        ("application/x-www-form-urlencoded; charset=latin-1", b"message=hi", 415),
        ("application/x-www-form-urlencoded; charset=\xff", b"message=hi", 415),
        ("application/json", b'{"message": "\xff"}', 400),
        ("application/json", b"[" * 5000 + b"]" * 5000, 400),
        ("application/json", b'"just a string"', 400),
        ("text/plain", b"hi", 415),
        ("multipart/form-data; boundary=x", b"--x--", 415),
    ],
)
async def test_a_body_that_is_no_form_is_a_4xx(
    server: Server, client: aiohttp.ClientSession, content_type: str, body: bytes, status: int
) -> None:
    page = await login(client, server, "alice", demo="longpolling")
    head = (
        f"POST /longpolling/room/messages?room=lobby HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nCookie: {COOKIE}={cookie_of(client, server)}\r\n"
        f"X-CSRF-Token: {page.csrf}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode() + b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    got, _ = await raw_request(server, head, body)
    assert got == status
    assert [e for e in await history(client, server) if e["type"] == "message"] == []


@pytest.mark.parametrize(
    "cookie",
    [b"\xff\xfe", "caf\u00e9".encode(), b"a" * 8000, b'"quoted"', b"x.y.z", b"\x00"],
)
async def test_a_cookie_that_is_not_ours_is_no_session(server: Server, cookie: bytes) -> None:
    head = (
        b"GET /longpolling/room/messages?room=lobby HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Cookie: " + COOKIE.encode() + b"=" + cookie + b"\r\nConnection: close\r\n\r\n"
    )
    status, _ = await raw_request(server, head)
    assert status in (400, 401)


# --- headers on every answer ------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(
    server: Server, client: aiohttp.ClientSession
) -> None:
    async def check(response: aiohttp.ClientResponse) -> None:
        csp = response.headers.get("Content-Security-Policy", "")
        assert "base-uri 'none'" in csp, response
        assert "form-action 'self'" in csp
        assert response.headers.get("X-Content-Type-Options") == "nosniff"
        assert "Strict-Transport-Security" not in response.headers

    async with client.get(f"{server.url}/nowhere") as r404:
        assert r404.status == 404
        await check(r404)
    async with client.put(f"{server.url}/api/rooms") as r405:
        assert r405.status == 405
        await check(r405)
    async with client.get(
        f"{server.url}/demo", params={"user": "alice"}, allow_redirects=False
    ) as r302:
        assert r302.status == 302
        await check(r302)
    page = await login(client, server, "bob")
    async with client.post(
        f"{server.url}/longpolling/room/messages",
        params={"room": "lobby"},
        data={"message": "x" * 20_000, "csrf": page.csrf},
    ) as r413:
        assert r413.status == 413
        await check(r413)


async def test_hsts_when_cookies_are_secure(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, secure_cookies=True) as srv,
        new_client() as c,
        c.get(f"{srv.url}/nowhere") as response,
    ):
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")


# --- what the route fuzz found (tests/web/test_fuzz_routes.py) --------------------------


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


@pytest.mark.parametrize(
    "head",
    [
        # a NUL in a cookie name (found by the fuzz: `Cookie: ...; \x00=`)
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: a=; \x00=\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x01b\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /longpolling/room/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
    ],
    ids=["nul-cookie-name", "control-byte", "two-lengths", "bad-chunk"],
)
async def test_a_request_that_cannot_be_parsed_is_400_and_logs_no_traceback(
    server: Server, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    caplog.set_level(logging.INFO)
    status, body = await raw_request(server, head)
    assert status == 400
    assert body.strip()
    await asyncio.sleep(0.05)
    assert _tracebacks(caplog) == []
    # it is still told, in one line
    assert any("malformed request" in r.getMessage() for r in caplog.records)


async def test_a_body_cut_short_by_the_client_logs_no_traceback(
    server: Server, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    # Content-Length promises 100 bytes; the client sends 10 and half-closes
    caplog.set_level(logging.INFO)
    page = await login(client, server, "alice", demo="longpolling")
    head = (
        f"POST /longpolling/room/messages?room=lobby HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nCookie: {COOKIE}={cookie_of(client, server)}\r\n"
        f"X-CSRF-Token: {page.csrf}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: 100\r\n\r\nmessage=hi"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        writer.write_eof()
        async with asyncio.timeout(10):
            await reader.read()
    finally:
        writer.close()
    await asyncio.sleep(0.1)
    assert _tracebacks(caplog) == []
    assert [e for e in await history(client, server) if e["type"] == "message"] == []


@pytest.mark.parametrize("path", ["/longpolling/room/messages", "/refresh/room"])
async def test_a_body_over_the_limit_is_413_with_a_reason(
    server: Server, client: aiohttp.ClientSession, path: str
) -> None:
    page = await login(client, server, "alice", demo="refresh")
    async with client.post(
        f"{server.url}{path}",
        params={"room": "lobby"},
        data={"message": "x" * 20_000, "csrf": page.csrf},
    ) as response:
        assert response.status == 413
        if path == "/refresh/room":
            # the room page, saying why
            assert "too large" in await response.text()
        else:
            refusal = await response.json()
            assert refusal["error"] == "too_large"
            assert "16384" in refusal["reason"]


# Two inputs that made a 500 and a traceback inside aiohttp, before the edge runs or
# outside it (fixed in app.py).


async def test_a_static_file_name_too_long_for_the_file_system_is_404(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    status, _ = await raw_request(
        server,
        b"GET /static/" + b"a" * 300 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    assert status == 404
    assert _tracebacks(caplog) == []


async def test_an_expect_header_that_is_not_utf8_is_417(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    status, _ = await raw_request(
        server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: \xff\r\nConnection: close\r\n\r\n"
    )
    assert status == 417
    assert _tracebacks(caplog) == []


@pytest.mark.parametrize("read", [True, False], ids=["read", "unread"])
async def test_a_body_not_in_its_content_encoding_is_400_and_logs_no_traceback(
    server: Server,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    read: bool,
) -> None:
    # `Content-Encoding: gzip` on a body that is not gzip: read by the edge (a say), or
    # left unread (no such route) and drained by aiohttp after the answer
    caplog.set_level(logging.INFO)
    page = await login(client, server, "alice", demo="longpolling")
    path = "/longpolling/room/messages" if read else "//longpolling/room/messages"
    body = b"message=hi&csrf=" + page.csrf.encode()
    head = (
        f"POST {path}?room=lobby HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nCookie: {COOKIE}={cookie_of(client, server)}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, answer = await raw_request(server, head, body)
    assert status == (400 if read else 404)
    if read:
        assert b"bad_body" in answer
    await asyncio.sleep(0.05)
    assert _tracebacks(caplog) == []
    assert [e for e in await history(client, server) if e["type"] == "message"] == []


async def test_pages_answer_503_not_500_while_the_backend_is_out(
    server: Server, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal shown as a page reads the backend again; with the backend out, the
    answer is the plain 503, not a 500 from the page that could not be drawn."""
    page = await login(client, server, "alice", demo="refresh")
    await server.broker.backend.close()
    for method, path, data in (
        ("GET", "/refresh/room", None),
        ("GET", "/websocket/room", None),
        ("POST", "/refresh/room", {"message": "hi", "csrf": page.csrf}),
    ):
        async with client.request(
            method, f"{server.url}{path}", params={"room": "lobby"}, data=data,
            allow_redirects=False,
        ) as response:
            assert response.status == 503, (path, await response.text())
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
