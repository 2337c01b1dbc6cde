"""The JSON API, health and metrics over real sockets."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatroom.core.events import parse_cursor
from tests.support import (
    Server,
    eventually,
    login,
    new_client,
    open_ws,
    publish,
    serving,
    ws_until,
)


async def get_json(client: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with client.get(url) as response:
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


async def metrics(client: aiohttp.ClientSession, server: Server) -> dict[str, float]:
    async with client.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_history_pages_back_through_120_events_without_gaps(
    server: Server, client: aiohttp.ClientSession
) -> None:
    ids = await publish(server, "archive", [f"m{i}" for i in range(120)])
    url = f"{server.url}/api/rooms/archive/history"
    pages: list[list[dict[str, Any]]] = []
    before: str | None = None
    while True:
        query = f"?limit=25&before={before}" if before else "?limit=25"
        body = await get_json(client, url + query)
        assert body["room"] == "archive"
        if not body["events"]:
            assert body["before"] is None
            break
        pages.append(body["events"])
        assert body["before"] == body["events"][0]["id"]
        before = body["before"]
    assert [len(p) for p in pages] == [25, 25, 25, 25, 20]
    got = [e for page in reversed(pages) for e in page]
    assert [e["id"] for e in got] == ids
    assert [e["text"] for e in got] == [f"m{i}" for i in range(120)]
    offsets = [parse_cursor(i) for i in ids]
    assert all(
        a is not None and b is not None and b.offset == a.offset + 1
        for a, b in itertools.pairwise(offsets)
    )


async def test_history_default_limit_and_unknown_room(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await publish(server, "lobby", [f"m{i}" for i in range(60)])
    body = await get_json(client, f"{server.url}/api/rooms/lobby/history")
    assert [e["text"] for e in body["events"]] == [f"m{i}" for i in range(10, 60)]
    empty = await get_json(client, f"{server.url}/api/rooms/nowhere/history")
    assert empty == {"room": "nowhere", "events": [], "before": None}


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "501", "1.5", ""])
async def test_bad_limit_400(server: Server, client: aiohttp.ClientSession, limit: str) -> None:
    body = await get_json(
        client, f"{server.url}/api/rooms/lobby/history?limit={limit}", status=400
    )
    assert body["error"] == "bad_limit"
    assert "1 to 500" in body["reason"]


async def test_bad_room_in_the_api_400(server: Server, client: aiohttp.ClientSession) -> None:
    for path in ("history", "presence"):
        body = await get_json(client, f"{server.url}/api/rooms/UPPER%20space/{path}", status=400)
        assert body["field"] == "room"


async def test_rooms_with_member_counts(server: Server, client: aiohttp.ClientSession) -> None:
    await publish(server, "quiet", ["hello?"])
    assert await get_json(client, f"{server.url}/api/rooms") == {
        "rooms": [{"name": "quiet", "members": 0}]
    }
    await login(client, server, "alice", room="busy")
    async with new_client() as other:
        await login(other, server, "bob", room="busy")
    rooms = (await get_json(client, f"{server.url}/api/rooms"))["rooms"]
    assert rooms == [{"name": "busy", "members": 2}, {"name": "quiet", "members": 0}]


async def test_healthz_and_readyz(server: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{server.url}/healthz") as response:
        assert response.status == 200
    async with client.get(f"{server.url}/readyz") as response:
        assert response.status == 200
        assert await response.text() == "ready\n"


async def test_readyz_503_once_the_backend_is_closed(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await server.broker.backend.close()
    async with client.get(f"{server.url}/readyz") as response:
        assert response.status == 503
        assert "backend unreachable" in await response.text()
    # alive, but not ready
    async with client.get(f"{server.url}/healthz") as response:
        assert response.status == 200
    # a say now is refused clearly, not hung
    async with new_client() as other:
        async with other.get(
            f"{server.url}/demo", params={"user": "late", "demo": "longpolling"}
        ) as response:
            # the page behind the redirect cannot read the room
            assert response.status == 503
            assert (await response.json())["error"] == "unavailable"
        async with other.get(f"{server.url}/api/rooms/lobby/history") as response:
            assert response.status == 503
            assert (await response.json())["error"] == "unavailable"


async def test_readyz_503_during_shutdown(tmp_path: Path) -> None:
    async with serving(tmp_path) as server, new_client() as client:
        server.broker.shutdown()
        async with client.get(f"{server.url}/readyz") as response:
            assert response.status == 503
            assert "shutting down" in await response.text()


async def test_metrics(server: Server, client: aiohttp.ClientSession) -> None:
    before = await metrics(client, server)
    assert before['chatroom_connections{technique="websocket"}'] == 0
    assert "chatroom_clients_cut_off_total" in before
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws_until(ws, lambda fs: len(fs) >= 1)
        await ws.send_json({"text": "counted", "client_id": "1"})
        await ws_until(ws, lambda fs: any(f.get("type") == "ack" for f in fs))
        during = await metrics(client, server)
    assert during['chatroom_connections{technique="websocket"}'] == 1
    # the join and the message
    assert (
        during["chatroom_events_published_total"]
        == before["chatroom_events_published_total"] + 2
    )
    assert during["chatroom_deliveries_total"] >= before["chatroom_deliveries_total"] + 1
    assert during["chatroom_subscribers"] == 1

    async def closed() -> bool:
        values = await metrics(client, server)
        return values['chatroom_connections{technique="websocket"}'] == 0

    await eventually(closed, within=3)


async def test_security_headers(server: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{server.url}/") as response:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    await login(client, server, "alice")
    cookie = next(c for c in client.cookie_jar if c.key == "chatroom_session")
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", cookie.value)
