"""Several rooms on one connection (`?follow=R:C&follow=...`), on each technique that
holds one: every room's events in its order with its cursor, resets and Leave per room,
presence per room, and the limit on rooms per connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
import pytest

from tests.support import (
    Server,
    SSEStream,
    eventually,
    history,
    login,
    new_client,
    press_leave,
    publish,
    serving,
    ws_json,
)

TECHNIQUES = ("longpolling", "sse", "websocket")

Item = dict[str, Any]


def follow(*rooms: tuple[str, str | None]) -> list[tuple[str, str]]:
    """The query of a multi-room connection: (room, cursor or None) each."""
    return [("follow", room if cursor is None else f"{room}:{cursor}") for room, cursor in rooms]


class Feed(Protocol):
    """One multi-room connection, read item by item (events, resets, notices)."""

    async def take(self, n: int) -> list[Item]: ...


class SSEFeed:
    def __init__(self, stream: SSEStream) -> None:
        self.stream = stream

    async def take(self, n: int) -> list[Item]:
        out: list[Item] = []
        for _ in range(n):
            event = await self.stream.next()
            assert event is not None, f"the stream ended after {out}"
            item = event.json()
            if item["type"] == "left":
                # a notice: `event: left` (a page must not reconnect it), never an id
                assert (event.event, event.id) == ("left", None), event
            else:
                assert event.event is None, event
                # an event's id line is its id; a reset has none (it is no cursor)
                assert event.id == (None if item["type"] == "reset" else item["id"]), event
            out.append(item)
        return out

    async def ended(self) -> bool:
        return await self.stream.next() is None


class WSFeed:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def take(self, n: int) -> list[Item]:
        out: list[Item] = []
        async with asyncio.timeout(5):
            while len(out) < n:
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, (msg, out)
                out.append(ws_json(msg))
        return out

    async def send(self, frame: Any) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())


class PollFeed:
    """Long polls in a row, each from the cursors the ones before ended on."""

    def __init__(
        self, client: aiohttp.ClientSession, server: Server, rooms: Sequence[tuple[str, str | None]]
    ) -> None:
        self.client, self.server = client, server
        self.cursors = dict(rooms)
        self.waiting: list[Item] = []

    async def poll(self) -> list[Item]:
        query = follow(*self.cursors.items())
        async with self.client.get(
            f"{self.server.url}/longpolling/room/messages", params=query
        ) as response:
            assert response.status == 200, await response.text()
            items: list[Item] = await response.json()
        for item in items:
            if item["type"] == "left":
                del self.cursors[item["room"]]
            elif item.get("id") is not None:
                self.cursors[item["room"]] = item["id"]
        return items

    async def take(self, n: int) -> list[Item]:
        async with asyncio.timeout(5):
            while len(self.waiting) < n:
                self.waiting.extend(await self.poll())
        out, self.waiting = self.waiting[:n], self.waiting[n:]
        return out


@asynccontextmanager
async def feed(
    technique: str,
    client: aiohttp.ClientSession,
    server: Server,
    *rooms: tuple[str, str | None],
) -> AsyncIterator[Any]:
    query = follow(*rooms)
    if technique == "sse":
        async with client.get(f"{server.url}/sse/room/events", params=query) as response:
            assert response.status == 200, await response.text()
            yield SSEFeed(SSEStream(response))
    elif technique == "websocket":
        async with client.ws_connect(
            f"{server.ws_url}/websocket/room/socket", params=query
        ) as ws:
            yield WSFeed(ws)
    else:
        yield PollFeed(client, server, rooms)


def by_room(items: list[Item]) -> dict[str, list[str]]:
    """The ids each room's items came with, in their order."""
    rooms: dict[str, list[str]] = {}
    for item in items:
        kind = item["type"]
        rooms.setdefault(item["room"], []).append(
            item["id"] if kind in ("join", "leave", "message") else kind
        )
    return rooms


async def enter(client: aiohttp.ClientSession, server: Server, *rooms: str) -> dict[str, str]:
    """Alice enters each room (one session); the CSRF token of each room's page."""
    return {room: (await login(client, server, "alice", room=room)).csrf for room in rooms}


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_two_rooms_on_one_connection_each_from_its_cursor(
    server: Server, client: aiohttp.ClientSession, technique: str
) -> None:
    await enter(client, server, "den", "attic")
    den = await publish(server, "den", [f"d{i}" for i in range(5)])
    attic = await publish(server, "attic", [f"a{i}" for i in range(3)])
    async with feed(technique, client, server, ("den", den[1]), ("attic", attic[0])) as f:
        got = await f.take(3 + 2)
        assert by_room(got) == {"den": den[2:], "attic": attic[1:]}
        # one connection, a subscription per room into the hub
        if technique != "longpolling":
            assert server.chat.connections[technique] == 1
            assert server.broker.subscribers("den") == server.broker.subscribers("attic") == 1
        (live_attic,) = await publish(server, "attic", ["live in the attic"])
        (live_den,) = await publish(server, "den", ["live in the den"])
        got = await f.take(2)
    # rooms interleave in no set order; each room's events come in its own
    assert sorted((i["room"], i["id"], i["text"]) for i in got) == [
        ("attic", live_attic, "live in the attic"),
        ("den", live_den, "live in the den"),
    ]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_room_without_cursor_gets_its_archive(
    server: Server, client: aiohttp.ClientSession, technique: str
) -> None:
    await enter(client, server, "den", "attic")
    den = await publish(server, "den", ["d0", "d1"])
    attic = [e["id"] for e in await history(client, server, "attic")]
    async with feed(technique, client, server, ("den", den[-1]), ("attic", None)) as f:
        got = await f.take(len(attic))
    assert by_room(got) == {"attic": attic}


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_reset_names_its_room_and_the_other_room_resumes(
    server: Server, client: aiohttp.ClientSession, technique: str
) -> None:
    await enter(client, server, "den", "attic")
    den = await publish(server, "den", ["d0", "d1", "d2"])
    kept = [e["id"] for e in await history(client, server, "attic")]
    async with feed(
        technique, client, server, ("den", den[0]), ("attic", "feedface-99")
    ) as f:
        got = await f.take(2 + 1 + len(kept))
    resets = [i for i in got if i["type"] == "reset"]
    assert resets == [{"type": "reset", "id": kept[0], "room": "attic"}]
    assert by_room(got) == {"den": den[1:], "attic": ["reset", *kept]}


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_leave_of_one_room_ends_only_that_room(
    server: Server, client: aiohttp.ClientSession, technique: str
) -> None:
    csrf = await enter(client, server, "den", "attic")
    den = await publish(server, "den", ["d0"])
    attic = await publish(server, "attic", ["a0"])
    async with feed(technique, client, server, ("den", den[-1]), ("attic", attic[-1])) as f:
        if technique != "longpolling":
            # connected: its presence holds both rooms
            await eventually(lambda: server.broker.subscribers("attic") == 1)
        await press_leave(client, server, csrf["attic"], technique, room="attic")
        if technique == "longpolling":
            # the next poll is told at once (after a Leave, nothing more of the room)
            (notice,) = await f.take(1)
        else:
            # alice's leave in the attic, then the notice that the attic ended here
            leave, notice = await f.take(2)
            assert (leave["room"], leave["type"], leave["user"]) == ("attic", "leave", "alice")
        assert notice["type"] == "left"
        assert (notice["room"], notice["error"]) == ("attic", "left")
        if technique == "longpolling":
            # a poll still naming the attic is told again, at once
            assert await PollFeed(client, server, [("attic", None)]).poll() == [notice]
        # the den goes on, on the same connection
        (said,) = await publish(server, "den", ["still here"])
        (item,) = await f.take(1)
        assert (item["room"], item["id"]) == ("den", said)
        if technique == "websocket":
            # saying in the room it left is refused; in the den it is not
            await f.send({"room": "attic", "text": "hello?", "client_id": "c1"})
            await f.send({"room": "den", "text": "hi den", "client_id": "c2"})
            ack, error, event = sorted(await f.take(3), key=lambda i: i["type"])
            assert (error["error"], error["client_id"]) == ("left", "c1")
            assert (event["room"], event["text"], ack["id"]) == ("den", "hi den", event["id"])
        # leaving the last room ends the connection
        await press_leave(client, server, csrf["den"], technique, room="den")
        *_, notice = await f.take(1 if technique == "longpolling" else 2)
        assert (notice["type"], notice["room"]) == ("left", "den")
        if technique == "sse":
            assert await f.ended()
        elif technique == "websocket":
            assert (await f.ws.receive()).type == aiohttp.WSMsgType.CLOSE
            assert f.ws.close_code == 4000


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_room_left_before_is_refused_alone(
    server: Server, client: aiohttp.ClientSession, technique: str
) -> None:
    csrf = await enter(client, server, "den", "attic")
    await press_leave(client, server, csrf["attic"], technique, room="attic")
    den = await publish(server, "den", ["d0", "d1"])
    async with feed(technique, client, server, ("attic", None), ("den", den[0])) as f:
        # (a long poll answers the notices at once, alone: the next follows the rest)
        notice, event = await f.take(2)
    assert notice == {
        "type": "left", "room": "attic", "error": "left",
        "reason": notice["reason"],
    }
    assert (event["room"], event["id"]) == ("den", den[1])


@pytest.mark.parametrize("technique", ["sse", "websocket"])
async def test_presence_is_per_room_per_connection(tmp_path: Path, technique: str) -> None:
    """Closing a connection is a leave in a room no other connection follows, and none in
    a room that another connection of the session still follows."""
    async with serving(tmp_path, presence_ttl=0.6) as server, new_client() as client:
        server.broker.presence.linger = 0.1
        server.broker.presence.reap_interval = 0.1
        # the den's page lease runs out before the attic's
        await enter(client, server, "den", "attic")
        async with AsyncExitStack() as stack:
            both = await stack.enter_async_context(
                feed(technique, client, server, ("den", None), ("attic", None))
            )
            async with feed(technique, client, server, ("den", None)) as den_only:
                await both.take(2)
                await den_only.take(1)
                await stack.aclose()

                async def left_the_attic() -> bool:
                    kinds = [e["type"] for e in await history(client, server, "attic")]
                    return kinds == ["join", "leave"]

                await eventually(left_the_attic)
                # the den's lease ran out before the attic's: another connection holds it
                assert [e["type"] for e in await history(client, server, "den")] == ["join"]
                assert await server.broker.members("den") == ["alice"]

            async def left_the_den() -> bool:
                kinds = [e["type"] for e in await history(client, server, "den")]
                return kinds == ["join", "leave"]

            await eventually(left_the_den)


async def test_longpoll_keeps_every_room_present(tmp_path: Path) -> None:
    async with serving(
        tmp_path, presence_ttl=0.6, longpoll_timeout=0.2
    ) as server, new_client() as client:
        server.broker.presence.reap_interval = 0.1
        await enter(client, server, "den", "attic")
        den = [e["id"] for e in await history(client, server, "den")]
        attic = [e["id"] for e in await history(client, server, "attic")]
        both = PollFeed(client, server, [("den", den[-1]), ("attic", attic[-1])])
        den_only = PollFeed(client, server, [("den", den[-1])])

        async def present_in(poller: PollFeed, rooms: list[str]) -> bool:
            await poller.poll()
            return [await server.broker.members(r) for r in ("den", "attic")] == [
                ["alice"] if r in rooms else [] for r in ("den", "attic")
            ]

        # polling both past the page's lease: present in both
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.0
        while loop.time() < until:
            assert await present_in(both, ["den", "attic"])
        # polling the den only: the attic's presence runs out, the den's does not
        async def left_the_attic() -> bool:
            kinds = [e["type"] for e in await history(client, server, "attic")]
            return await present_in(den_only, ["den"]) and kinds == ["join", "leave"]

        await eventually(left_the_attic)
        assert [e["type"] for e in await history(client, server, "den")] == ["join"]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_more_rooms_than_one_connection_may_follow_is_400(
    tmp_path: Path, technique: str
) -> None:
    async with serving(tmp_path, max_rooms_per_connection=2) as server, new_client() as client:
        await enter(client, server, "r1", "r2", "r3")
        path = {
            "longpolling": "/longpolling/room/messages",
            "sse": "/sse/room/events",
            "websocket": "/websocket/room/socket",
        }[technique]
        # at the limit: served
        if technique == "websocket":
            async with client.ws_connect(
                f"{server.ws_url}{path}", params=follow(("r1", None), ("r2", None))
            ) as ws:
                assert ws_json(await ws.receive())["type"] == "join"
        else:
            async with feed(technique, client, server, ("r1", None), ("r2", None)) as f:
                await f.take(1)
        # one more: refused before anything changed
        headers = {"Connection": "Upgrade", "Upgrade": "websocket",
                   "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        async with client.get(
            f"{server.url}{path}",
            params=follow(("r1", None), ("r2", None), ("r3", None)),
            headers=headers if technique == "websocket" else None,
        ) as response:
            assert response.status == 400
            body = await response.json()
        assert body["error"] == "too_many_rooms"
        assert body["field"] == "follow"
        assert "at most 2 rooms" in body["reason"]
        # the refused one never counted; the one before is gone
        await eventually(lambda: server.chat.connections[technique] == 0)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ([("follow", "den"), ("follow", "den:")], "followed twice"),
        ([("follow", "den"), ("room", "den")], "not both"),
        ([("follow", "den"), ("lastReceived", "x-1")], "not both"),
        ([("follow", "Not A Room")], "room names"),
        ([("follow", ":abc-1")], "room names"),
        ([("follow", "")], "room names"),
    ],
)
async def test_malformed_follow_is_400(
    server: Server, client: aiohttp.ClientSession, query: list[tuple[str, str]], reason: str
) -> None:
    await enter(client, server, "den")
    for path in ("/longpolling/room/messages", "/sse/room/events"):
        async with client.get(f"{server.url}{path}", params=query) as response:
            assert response.status == 400
            body = await response.json()
        assert (body["error"], body["field"]) == ("invalid", "follow")
        assert reason in body["reason"]


async def test_a_malformed_cursor_is_a_reset_not_a_refusal(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await enter(client, server, "den")
    kept = [e["id"] for e in await history(client, server, "den")]
    items = await PollFeed(client, server, [("den", "not:a cursor")]).poll()
    assert items[0] == {"type": "reset", "id": kept[0], "room": "den"}


async def test_sse_ignores_last_event_id_on_a_multi_room_stream(
    server: Server, client: aiohttp.ClientSession
) -> None:
    # It names one event of one room: the cursors in the URL are the stream's.
    await enter(client, server, "den", "attic")
    den = await publish(server, "den", ["d0", "d1", "d2"])
    async with client.get(
        f"{server.url}/sse/room/events",
        params=follow(("den", den[1])),
        headers={"Last-Event-ID": den[0]},
    ) as response:
        (item,) = await SSEFeed(SSEStream(response)).take(1)
    assert item["id"] == den[2]


async def test_websocket_messages_name_their_room(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await enter(client, server, "den", "attic")
    den = await publish(server, "den", ["d0"])
    attic = await publish(server, "attic", ["a0"])
    async with feed("websocket", client, server, ("den", den[0]), ("attic", attic[0])) as f:
        await f.send({"room": "attic", "text": "up here", "client_id": "c1"})
        await f.send({"room": "den", "text": "down here", "client_id": "c2"})
        got = await f.take(4)
        events = [(i["room"], i["text"]) for i in got if i["type"] == "message"]
        acks = {i["client_id"]: i["id"] for i in got if i["type"] == "ack"}
        assert events == [("attic", "up here"), ("den", "down here")]
        assert set(acks) == {"c1", "c2"}
        # without a room, or naming one it does not follow: an error, and it stays
        await f.send({"text": "where?", "client_id": "c3"})
        await f.send({"room": "lobby", "text": "there?", "client_id": "c4"})
        await f.send({"room": 7, "text": "seven?", "client_id": "c5"})
        errors = await f.take(3)
        assert [(e["type"], e["error"], e["client_id"]) for e in errors] == [
            ("error", "invalid", "c3"), ("error", "invalid", "c4"), ("error", "invalid", "c5"),
        ]
        assert "name one" in errors[0]["reason"]
        assert "does not follow room 'lobby'" in errors[1]["reason"]
        await f.send("a bare string names no room")
        (error,) = await f.take(1)
        assert error["error"] == "invalid"
    texts = [e["text"] for e in await history(client, server, "den") if e["type"] == "message"]
    assert texts == ["d0", "down here"]


async def test_websocket_single_room_socket_takes_a_frame_naming_its_room(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await enter(client, server, "den")
    async with client.ws_connect(
        f"{server.ws_url}/websocket/room/socket", params={"room": "den"}
    ) as ws:
        f = WSFeed(ws)
        (join,) = await f.take(1)
        assert join["type"] == "join"
        await f.send({"text": "no room named", "client_id": "c1"})
        await f.send({"room": "den", "text": "its room named", "client_id": "c2"})
        await f.send({"room": "attic", "text": "another room", "client_id": "c3"})
        got = await f.take(5)
    assert [i["type"] for i in got].count("ack") == 2
    (error,) = [i for i in got if i["type"] == "error"]
    assert (error["error"], error["client_id"]) == ("invalid", "c3")
    # the single-room form: events as ever, resets without a room
    assert all(i.get("room") in (None, "den") for i in got)
