"""Abuse limits: each configurable, each answered with a clear status, each crossed here."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from chatroom.web.security import COOKIE
from tests.redis_server import free_port
from tests.support import (
    Server,
    cookie_of,
    eventually,
    history,
    login,
    new_client,
    open_ws,
    serving,
)


async def demo(
    client: aiohttp.ClientSession, server: Server, user: str, room: str = "lobby", **headers: str
) -> aiohttp.ClientResponse:
    async with client.get(
        f"{server.url}/demo",
        params={"user": user, "room": room, "demo": "longpolling"},
        headers=headers,
        allow_redirects=False,
    ) as response:
        await response.read()
        return response


async def test_claiming_nicknames_is_rate_limited_per_address(tmp_path: Path) -> None:
    async with serving(tmp_path, demo_rate_limit=0.01, demo_rate_burst=3) as server:
        statuses = []
        for i in range(5):
            async with new_client() as fresh:
                response = await demo(fresh, server, f"user{i}")
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
        assert statuses == [302, 302, 302, 429, 429]
        # another address (through a trusted proxy's word) is not held back
    async with serving(
        tmp_path, demo_rate_limit=0.01, demo_rate_burst=1, trusted_proxies=("127.0.0.1",)
    ) as server:
        for i in range(3):
            async with new_client() as fresh:
                response = await demo(fresh, server, f"u{i}", **{"X-Forwarded-For": f"10.0.0.{i}"})
                assert response.status == 302


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    async with serving(tmp_path, demo_rate_limit=0.01, demo_rate_burst=1) as server:
        statuses = []
        for i in range(2):
            async with new_client() as fresh:
                response = await demo(fresh, server, f"u{i}", **{"X-Forwarded-For": f"10.0.0.{i}"})
                statuses.append(response.status)
        assert statuses == [302, 429]


async def test_opening_rooms_is_rate_limited_per_address(tmp_path: Path) -> None:
    async with serving(tmp_path, room_rate_limit=0.001, room_rate_burst=2) as server:
        statuses = []
        async with new_client() as client:
            for i in range(4):
                statuses.append((await demo(client, server, "alice", room=f"room{i}")).status)
            # rooms that exist cost nothing to enter
            assert (await demo(client, server, "alice", room="room0")).status == 302
            # nor can a room page, a poll or a stream open a new room past the limit
            for path in ("/longpolling/room", "/longpolling/room/messages", "/sse/room/events"):
                async with client.get(
                    f"{server.url}{path}", params={"room": "another"}, allow_redirects=False
                ) as response:
                    assert response.status == 429, path
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with open_ws(client, server, room="another"):
                    pass
            assert refused.value.status == 429
        assert statuses == [302, 302, 429, 429]
        async with new_client() as client, client.get(f"{server.url}/api/rooms") as response:
            names = {r["name"] for r in (await response.json())["rooms"]}
        assert "room2" not in names
        assert "another" not in names


async def test_a_cross_site_demo_sets_no_cookie_and_changes_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path) as server, new_client() as client:
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
            response = await demo(client, server, "victim", room="attackers-room", **headers)
            assert response.status == 303
            location = response.headers["Location"]
            # an invitation still works: the welcome page with the room filled in
            assert location.startswith("/?")
            assert "room=attackers-room" in location
            assert "Set-Cookie" not in response.headers
        assert COOKIE not in {c.key for c in client.cookie_jar}
        assert await history(client, server, room="attackers-room") == []
        # the same link followed from the site itself works
        response = await demo(client, server, "victim", room="a-room", **{"Sec-Fetch-Site": "none"})
        assert response.status == 302


async def test_saying_is_rate_limited_per_address_across_sessions(tmp_path: Path) -> None:
    async with serving(
        tmp_path, rate_limit=100, rate_burst=100, address_rate_limit=0.01, address_rate_burst=8
    ) as server:
        statuses = []
        for n in range(4):
            async with new_client() as client:
                page = await login(client, server, f"sock{n}")
                for i in range(3):
                    async with client.post(
                        f"{server.url}/longpolling/room/messages",
                        params={"room": "lobby"},
                        json={"message": f"{n}-{i}", "csrf": page.csrf},
                    ) as response:
                        statuses.append(response.status)
                        if response.status == 429:
                            body = await response.json()
                            assert body["error"] == "rate_limited"
                            assert body["retry_after"] > 0
                            assert int(response.headers["Retry-After"]) >= 1
        assert statuses.count(200) == 8
        assert statuses.count(429) == 4


async def test_streaming_connections_are_capped_per_session(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections_per_session=2) as server, new_client() as c:
        await login(c, server, "alice", demo="websocket")
        async with open_ws(c, server), open_ws(c, server):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with open_ws(c, server):
                    pass
            assert refused.value.status == 429
            async with c.get(
                f"{server.url}/sse/room/events", params={"room": "lobby"}
            ) as response:
                assert response.status == 429
                assert (await response.json())["error"] == "too_many_connections"
        # closed: the places are given back
        await eventually(lambda: server.chat.edge.gate.open == 0)
        async with open_ws(c, server), open_ws(c, server):
            pass


async def test_streaming_connections_are_capped_per_address_and_in_all(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections_per_address=3) as server:
        clients = [new_client() for _ in range(4)]
        try:
            for i, c in enumerate(clients):
                await login(c, server, f"user{i}", demo="longpolling")
            last = (await login(clients[0], server, "user0", demo="longpolling")).last_id
            polls = [
                asyncio.ensure_future(
                    c.get(f"{server.url}/longpolling/room/messages",
                          params={"room": "lobby", "lastReceived": last})
                )
                for c in clients[:3]
            ]
            await eventually(lambda: server.chat.connections["longpolling"] == 3)
            async with clients[3].get(
                f"{server.url}/longpolling/room/messages", params={"room": "lobby"}
            ) as response:
                assert response.status == 429
            for p in polls:
                p.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
        finally:
            for c in clients:
                await c.close()
    async with serving(tmp_path, max_connections=1) as server, new_client() as c:
        await login(c, server, "alice", demo="websocket")
        async with open_ws(c, server), new_client() as other:
            await login(other, server, "bob", demo="websocket")
            with pytest.raises(aiohttp.WSServerHandshakeError) as full:
                async with open_ws(other, server):
                    pass
            assert full.value.status == 503


async def test_a_parked_poll_whose_client_went_is_answered_at_once(tmp_path: Path) -> None:
    async with serving(tmp_path) as server, new_client() as client:
        last = (await login(client, server, "alice", demo="longpolling")).last_id
        head = (
            f"GET /longpolling/room/messages?room=lobby&lastReceived={last} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nCookie: {COOKIE}={cookie_of(client, server)}\r\n\r\n"
        ).encode()
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        await eventually(lambda: server.chat.connections["longpolling"] == 1)
        writer.close()
        # not after the 25 s the poll would otherwise wait
        await eventually(lambda: server.chat.connections["longpolling"] == 0, within=2)
        await eventually(lambda: server.chat.edge.gate.open == 0, within=2)


async def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, header_timeout=0.5, keepalive_timeout=30) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(5):
            while True:
                # a byte now and then buys no time
                writer.write(b"a")
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(100), 0.1) == b"":
                        break
        assert loop.time() - start < 3
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, header_timeout=5, keepalive_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"ok\n")
            assert b"200 OK" in head
            # then nothing: the server closes the idle connection
            assert await reader.read() == b""
        writer.close()


def test_a_full_process_still_answers_health_checks(tmp_path: Path) -> None:
    """Under a low open-file limit, streaming connections stop short of it: /healthz and
    the API still get a file descriptor."""
    port = free_port()
    script = f"""
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from chatroom import cli
sys.exit(cli.main(["serve", "--host", "127.0.0.1", "--port", "{port}",
    "--backend", "memory://", "--secret", "s" * 32, "--fd-reserve", "32",
    "--max-connections-per-address", "1000", "--max-connections-per-session", "1000",
    "--log-level", "WARNING"]))
"""
    server = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    try:
        asyncio.run(_fill_and_probe(port))
    finally:
        server.terminate()
        server.wait(10)


async def _fill_and_probe(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    async with asyncio.timeout(60):
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as client:
            async with client.get(
                f"{base}/demo", params={"user": "filler", "demo": "sse"}
            ) as response:
                assert response.status == 200
            streams: list[aiohttp.ClientResponse] = []
            refused = 0
            for _ in range(120):
                response = await client.get(f"{base}/sse/room/events", params={"room": "lobby"})
                if response.status == 200:
                    streams.append(response)
                else:
                    assert response.status == 503, await response.text()
                    refused += 1
                    response.release()
            assert refused > 0
            assert len(streams) <= 128 - 32
            async with aiohttp.ClientSession() as probe:
                for path in ("/healthz", "/api/rooms"):
                    async with probe.get(f"{base}{path}") as answer:
                        assert answer.status == 200
            for response in streams:
                response.close()

