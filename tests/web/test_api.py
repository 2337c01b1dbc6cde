"""The JSON API, health and metrics over real sockets."""

from __future__ import annotations

import itertools
import re
import time
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


async def get_json(
    client: aiohttp.ClientSession,
    url: str,
    status: int = 200,
    params: dict[str, str] | None = None,
) -> Any:
    async with client.get(url, params=params) as response:
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


# Unicode digits ("²", Arabic-Indic "٣"), signs, spaces, fractions, 5,000 digits.
BAD_NUMBERS = [
    "0", "-1", "abc", "1.5", "", "\u00b2", "\u0663", "\u0663\u0660", "+5", " 5", "5 ", "0x10",
    "1e2", "5" * 5000, "\uff15",
]


@pytest.mark.parametrize("limit", [*BAD_NUMBERS, "501"])
async def test_bad_history_limit_400(
    server: Server, client: aiohttp.ClientSession, limit: str
) -> None:
    body = await get_json(
        client, f"{server.url}/api/rooms/lobby/history", params={"limit": limit}, status=400
    )
    assert body["error"] == "invalid"
    assert body["field"] == "limit"
    assert "1 to 500" in body["reason"]


async def test_history_limit_bounds_are_taken(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await publish(server, "lobby", [f"m{i}" for i in range(3)])
    for limit, n in (("1", 1), ("500", 3), ("0002", 2)):
        body = await get_json(
            client, f"{server.url}/api/rooms/lobby/history", params={"limit": limit}
        )
        assert len(body["events"]) == n


@pytest.mark.parametrize(
    "before",
    [
        "garbage", "abc-", "-5", "ABC-1", "abc-1-", "abc-\u00b2", "abc-\u0663", "a b-1",
        "abc-" + "9" * 19, "a" * 33 + "-1", "abc-1" * 1000,
    ],
)
async def test_malformed_before_400(
    server: Server, client: aiohttp.ClientSession, before: str
) -> None:
    await publish(server, "lobby", ["one"])
    body = await get_json(
        client, f"{server.url}/api/rooms/lobby/history", params={"before": before}, status=400
    )
    assert (body["error"], body["field"]) == ("invalid", "before")


async def test_empty_before_is_the_newest_page_and_a_foreign_epoch_an_empty_one(
    server: Server, client: aiohttp.ClientSession
) -> None:
    ids = await publish(server, "lobby", ["one", "two"])
    url = f"{server.url}/api/rooms/lobby/history"
    body = await get_json(client, url, params={"before": ""})
    assert [e["id"] for e in body["events"]] == ids
    body = await get_json(client, url, params={"before": "zzzz9999-2"})
    assert body == {"room": "lobby", "events": [], "before": None}


async def test_a_value_given_twice_400(server: Server, client: aiohttp.ClientSession) -> None:
    for path, name in (("rooms/lobby/history", "limit"), ("rooms", "limit"), ("rooms", "cursor")):
        body = await get_json(
            client, f"{server.url}/api/{path}?{name}=1&{name}=2", status=400
        )
        assert (body["error"], body["field"]) == ("invalid", name)


async def test_bad_room_in_the_api_400(server: Server, client: aiohttp.ClientSession) -> None:
    for path in ("history", "presence"):
        for room in ("UPPER%20space", "%20lobby", "a%2Fb", "x" * 65, "caf%C3%A9", "%E2%84%AA"):
            body = await get_json(client, f"{server.url}/api/rooms/{room}/{path}", status=400)
            assert body["field"] == "room"


async def test_room_names_are_lower_cased(server: Server, client: aiohttp.ClientSession) -> None:
    await publish(server, "mixed", ["hi"])
    body = await get_json(client, f"{server.url}/api/rooms/MiXeD/history")
    assert (body["room"], [e["text"] for e in body["events"]]) == ("mixed", ["hi"])


async def test_unknown_api_paths_404_in_json(
    server: Server, client: aiohttp.ClientSession
) -> None:
    for path in ("nothing", "rooms//history", "rooms/lobby/history/", "rooms/lobby"):
        body = await get_json(client, f"{server.url}/api/{path}", status=404)
        assert body["error"] == "not_found"


async def test_rooms_with_member_counts(server: Server, client: aiohttp.ClientSession) -> None:
    await publish(server, "quiet", ["hello?"])
    assert await get_json(client, f"{server.url}/api/rooms") == {
        "rooms": [{"name": "quiet", "members": 0}],
        "next": None,
    }
    await login(client, server, "alice", room="busy")
    async with new_client() as other:
        await login(other, server, "bob", room="busy")
    body = await get_json(client, f"{server.url}/api/rooms")
    assert body == {
        "rooms": [{"name": "busy", "members": 2}, {"name": "quiet", "members": 0}],
        "next": None,
    }


async def test_rooms_page_with_a_cursor(server: Server, client: aiohttp.ClientSession) -> None:
    names = [f"r{i:02}" for i in range(12)]
    for name in names:
        await publish(server, name, ["hi"])
    await login(client, server, "alice", room="r07")
    expected = ["r07", *(n for n in names if n != "r07")]
    seen: list[dict[str, Any]] = []
    cursor = ""
    pages = 0
    while True:
        body = await get_json(
            client, f"{server.url}/api/rooms", params={"limit": "5", "cursor": cursor}
        )
        pages += 1
        seen.extend(body["rooms"])
        if body["next"] is None:
            break
        assert len(body["rooms"]) == 5
        cursor = body["next"]
    assert pages == 3
    assert [r["name"] for r in seen] == expected
    assert seen[0] == {"name": "r07", "members": 1}
    # the default page is 50, the largest 100
    assert len((await get_json(client, f"{server.url}/api/rooms"))["rooms"]) == 12
    for limit in [*BAD_NUMBERS, "101"]:
        body = await get_json(
            client, f"{server.url}/api/rooms", params={"limit": limit}, status=400
        )
        assert "1 to 100" in body["reason"]
    for cursor in ("garbage", "1.", ".lobby", "-1.lobby", "1.LOBBY", "\u0663.lobby", "1.a b"):
        body = await get_json(
            client, f"{server.url}/api/rooms", params={"cursor": cursor}, status=400
        )
        assert body["field"] == "cursor"


async def test_an_idle_empty_room_drops_out_of_the_listing_and_keeps_its_history(
    server: Server, client: aiohttp.ClientSession
) -> None:
    ids = await publish(server, "old", ["still here"])
    await login(client, server, "alice", room="kept")
    # an hour later, "old" has been without news for longer than room_idle (600 s)
    later = time.time() + 3600
    server.broker.wall_clock = lambda: later
    server.broker.room_idle = 600.0
    body = await get_json(client, f"{server.url}/api/rooms")
    assert body["rooms"] == [{"name": "kept", "members": 1}]
    history = await get_json(client, f"{server.url}/api/rooms/old/history")
    assert [e["id"] for e in history["events"]] == ids
    # news brings it back
    await publish(server, "old", ["back"])
    names = [r["name"] for r in (await get_json(client, f"{server.url}/api/rooms"))["rooms"]]
    assert names == ["kept", "old"]


async def test_welcome_lists_at_most_50_rooms(
    server: Server, client: aiohttp.ClientSession
) -> None:
    async def welcome() -> str:
        async with client.get(f"{server.url}/") as response:
            assert response.status == 200
            return await response.text()

    for i in range(50):
        await publish(server, f"room{i:03}", ["hi"])
    page = await welcome()
    assert page.count('class="room-name"') == 50
    assert 'id="more-rooms"' not in page
    for i in range(50, 300):
        await publish(server, f"room{i:03}", ["hi"])
    page = await welcome()
    assert page.count('class="room-name"') == 50
    assert 'id="more-rooms"' in page
    assert "#room049" in page
    assert "#room050" not in page


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
