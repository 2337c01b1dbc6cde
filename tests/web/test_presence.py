"""Presence over real sockets: one join per nickname, leave after the last connection, leave."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.support import (
    ManualClock,
    Server,
    eventually,
    history,
    login,
    new_client,
    open_ws,
    press_leave,
    serving,
    ws_until,
)


async def members(client: aiohttp.ClientSession, server: Server, room: str = "lobby") -> list[str]:
    async with client.get(f"{server.url}/api/rooms/{room}/presence") as response:
        assert response.status == 200
        body = await response.json()
    assert body["room"] == room
    found: list[str] = body["members"]
    return found


async def kinds(client: aiohttp.ClientSession, server: Server) -> list[tuple[str, str]]:
    return [(e["type"], e["user"]) for e in await history(client, server)]


async def test_two_sockets_one_join_and_leave_after_the_last_closes(tmp_path: Path) -> None:
    clock = ManualClock()
    async with serving(tmp_path, presence_clock=clock) as server, new_client() as client:
        presence = server.broker.presence
        await login(client, server, "alice", demo="websocket")
        async with open_ws(client, server) as first:
            async with open_ws(client, server) as second:
                await ws_until(second, lambda fs: len(fs) >= 1)
                await ws_until(first, lambda fs: len(fs) >= 1)
                # the page's poll lease runs out; the sockets' heartbeats keep alice
                for _ in range(3):
                    clock.advance(presence.presence_ttl / 2)
                    await presence.beat()
                await presence.reap()
                assert await members(client, server) == ["alice"]
            await eventually(lambda: presence.sockets() == 1)
            clock.advance(presence.presence_ttl / 2)
            await presence.beat()
            await presence.reap()
            # one socket left: still present, no leave
            assert await members(client, server) == ["alice"]
            assert await kinds(client, server) == [("join", "alice")]
        # the last one closed: it lingers, then a reaper round reports one leave
        await eventually(lambda: presence.sockets() == 0)
        await presence.reap()
        assert await members(client, server) == ["alice"]
        clock.advance(presence.linger)
        await presence.reap()
        assert await members(client, server) == []
        assert await kinds(client, server) == [("join", "alice"), ("leave", "alice")]


async def test_a_reconnect_within_linger_is_no_leave(tmp_path: Path) -> None:
    clock = ManualClock()
    async with serving(tmp_path, presence_clock=clock) as server, new_client() as client:
        presence = server.broker.presence
        await login(client, server, "alice", demo="websocket")
        # the page's poll lease runs out while the sockets come and go; each closed
        # socket lingers until the next one opens
        for _ in range(3):
            async with open_ws(client, server) as ws:
                await ws_until(ws, lambda fs: len(fs) >= 1)
                clock.advance(presence.presence_ttl / 2)
                await presence.beat()
            await eventually(lambda: presence.sockets() == 0)
            clock.advance(presence.linger / 2)
            await presence.reap()
        assert await members(client, server) == ["alice"]
        assert await kinds(client, server) == [("join", "alice")]
        clock.advance(presence.linger)
        await presence.reap()
        assert await kinds(client, server) == [("join", "alice"), ("leave", "alice")]


async def test_presence_and_rooms_list_members(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", room="den", demo="websocket")
    async with new_client() as other:
        await login(other, server, "bob", room="den", demo="sse")
        await login(other, server, "bob", room="attic", demo="sse")
        assert await members(client, server, "den") == ["alice", "bob"]
        assert await members(client, server, "attic") == ["bob"]
        assert await members(client, server, "lobby") == []
        async with client.get(f"{server.url}/api/rooms") as response:
            rooms = (await response.json())["rooms"]
    assert rooms == [{"name": "den", "members": 2}, {"name": "attic", "members": 1}]


async def test_leave_ends_the_member_and_closes_its_websocket(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws_until(ws, lambda fs: len(fs) >= 1)
        assert await press_leave(client, server, page.csrf, "websocket") == "/?room=lobby"
        frames = []
        async with asyncio.timeout(3):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frames.append(msg.json())
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4000
        assert "left" in str(msg.extra)
    assert [f["type"] for f in frames] == ["leave"]
    assert await members(client, server) == []
    assert await kinds(client, server) == [("join", "alice"), ("leave", "alice")]
    # the nickname is free for someone else now
    async with new_client() as other:
        await login(other, server, "alice", demo="refresh")


async def test_leave_needs_csrf_and_same_origin(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="longpolling")
    async with client.post(
        f"{server.url}/longpolling/room/leave", allow_redirects=False
    ) as response:
        assert response.status == 403
    async with client.post(
        f"{server.url}/longpolling/room/leave",
        data={"csrf": page.csrf},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    ) as response:
        assert response.status == 403
    assert await members(client, server) == ["alice"]


async def test_get_on_the_leave_route_changes_nothing_405(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    for technique in ("refresh", "longpolling", "websocket", "sse"):
        async with client.get(
            f"{server.url}/{technique}/room/leave", allow_redirects=False
        ) as response:
            assert response.status == 405
    assert await members(client, server) == ["alice"]
    assert await kinds(client, server) == [("join", "alice")]
