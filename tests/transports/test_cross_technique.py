"""One room, four techniques: what one says, every other technique receives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support import (
    Login,
    Server,
    SSEStream,
    eventually,
    history,
    login,
    new_client,
    open_ws,
    poll,
    thread_messages,
    ws_until,
)


@dataclass
class Room:
    """Four people in one room, each on another technique."""

    ws_client: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    lp_client: aiohttp.ClientSession
    lp: Login
    sse_client: aiohttp.ClientSession
    sse: SSEStream
    refresh_client: aiohttp.ClientSession
    refresh: Login
    # the newest id every one of them has seen when the scene is set
    head: str


@asynccontextmanager
async def four_people(server: Server) -> AsyncIterator[Room]:
    async with AsyncExitStack() as stack:
        ws_client = await stack.enter_async_context(new_client())
        lp_client = await stack.enter_async_context(new_client())
        sse_client = await stack.enter_async_context(new_client())
        refresh_client = await stack.enter_async_context(new_client())
        await login(ws_client, server, "wendy", demo="websocket")
        lp = await login(lp_client, server, "larry", demo="longpolling")
        await login(sse_client, server, "sam", demo="sse")
        refresh = await login(refresh_client, server, "rita", demo="refresh")
        joined = await history(ws_client, server)
        head = joined[-1]["id"]
        ws = await stack.enter_async_context(open_ws(ws_client, server))
        await ws_until(ws, lambda fs: fs and fs[-1].get("id") == head)
        response = await stack.enter_async_context(
            sse_client.get(f"{server.url}/sse/room/events", params={"lastReceived": head})
        )
        assert response.status == 200
        yield Room(
            ws_client, ws, lp_client, lp, sse_client, SSEStream(response),
            refresh_client, refresh, head,
        )


async def refresh_page(client: aiohttp.ClientSession, server: Server) -> str:
    async with client.get(f"{server.url}/refresh/room", params={"room": "lobby"}) as response:
        assert response.status == 200
        return await response.text()


async def test_websocket_say_reaches_longpoll_sse_and_refresh(server: Server) -> None:
    async with four_people(server) as room:
        parked = asyncio.create_task(poll(room.lp_client, server, last=room.head))
        await eventually(lambda: server.chat.connections["longpolling"] == 1)
        await room.ws.send_json({"text": "hello from ws", "client_id": "w1"})
        frames = await ws_until(room.ws, lambda fs: any(f.get("type") == "ack" for f in fs))
        ack = next(f for f in frames if f["type"] == "ack")

        async with asyncio.timeout(3):
            polled = await parked
        assert [(e["id"], e["user"], e["text"]) for e in polled] == [
            (ack["id"], "wendy", "hello from ws")
        ]

        event = await room.sse.next()
        assert event is not None
        assert event.id == ack["id"]
        assert event.json()["text"] == "hello from ws"

        page = await refresh_page(room.refresh_client, server)
        assert (ack["id"], "wendy", "hello from ws") in thread_messages(page)


async def test_longpoll_and_refresh_says_reach_websocket_and_sse(server: Server) -> None:
    async with four_people(server) as room:
        async with room.lp_client.post(
            f"{server.url}/longpolling/room/messages",
            params={"room": "lobby"},
            data={"message": "hello from long polling", "csrf": room.lp.csrf},
        ) as response:
            assert response.status == 200
            said = await response.json()
        async with room.refresh_client.post(
            f"{server.url}/refresh/room",
            params={"room": "lobby"},
            data={"message": "hello from refresh", "csrf": room.refresh.csrf},
            allow_redirects=False,
        ) as response:
            assert response.status == 303

        frames = await ws_until(room.ws, lambda fs: len(fs) >= 2)
        sse_events = [await room.sse.next(), await room.sse.next()]

        expected: list[tuple[str, str]] = [
            ("larry", "hello from long polling"),
            ("rita", "hello from refresh"),
        ]
        assert [(f["user"], f["text"]) for f in frames] == expected
        assert frames[0]["id"] == said["id"]
        got: list[dict[str, Any]] = []
        for event in sse_events:
            assert event is not None
            got.append(event.json())
            assert event.id == got[-1]["id"]
        assert got == frames
        stored = await history(room.ws_client, server)
        assert stored[-2:] == frames
