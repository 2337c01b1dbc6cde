"""Long polling over real loopback sockets: archive, cursor, parking, says and refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    ManualClock,
    Server,
    eventually,
    history,
    login,
    new_client,
    poll,
    publish,
    say_lp,
    serving,
)

MESSAGES = "/longpolling/room/messages"


async def post(
    client: aiohttp.ClientSession,
    server: Server,
    room: str = "lobby",
    **kwargs: Any,
) -> tuple[int, Any]:
    async with client.post(f"{server.url}{MESSAGES}", params={"room": room}, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


async def stored_texts(client: aiohttp.ClientSession, server: Server) -> list[str]:
    return [e["text"] for e in await history(client, server) if e["type"] == "message"]


async def test_no_cursor_gives_the_archive_of_the_last_50(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice")
    await publish(server, "lobby", [f"m{i}" for i in range(60)])
    events = await poll(client, server)
    assert [e["text"] for e in events] == [f"m{i}" for i in range(10, 60)]


async def test_cursor_gives_the_events_after_it(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice")
    ids = await publish(server, "lobby", [f"m{i}" for i in range(8)])
    events = await poll(client, server, last=ids[4])
    assert [e["id"] for e in events] == ids[5:]


async def test_unknown_cursor_gets_reset_then_what_is_retained(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice")
    await publish(server, "lobby", ["a"])
    stored = await history(client, server)
    events = await poll(client, server, last="feedface-1")
    assert events[0] == {"type": "reset", "id": stored[0]["id"]}
    assert [e["id"] for e in events[1:]] == [e["id"] for e in stored]


async def test_waits_then_answers_empty_after_the_timeout(tmp_path: Path) -> None:
    async with serving(tmp_path, longpoll_timeout=0.5) as server, new_client() as client:
        await login(client, server, "alice")
        head = (await history(client, server))[-1]["id"]
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await poll(client, server, last=head) == []
        elapsed = loop.time() - start
    assert 0.45 <= elapsed < 3


async def test_a_parked_poll_is_answered_by_a_new_message_quickly(
    server: Server, client: aiohttp.ClientSession
) -> None:
    # the default timeout is 25 s: an answer within 2 s is the message, not the timeout
    await login(client, server, "alice")
    async with new_client() as other:
        bob = await login(other, server, "bob")
        head = (await history(client, server))[-1]["id"]
        parked = asyncio.create_task(poll(client, server, last=head))
        await eventually(lambda: server.chat.connections["longpolling"] == 1)
        assert not parked.done()
        async with asyncio.timeout(2):
            said = await say_lp(other, server, bob.csrf, "wake up")
            events = await parked
    assert events == [said]


async def test_post_form(server: Server, client: aiohttp.ClientSession) -> None:
    page = await login(client, server, "alice")
    status, body = await post(
        client, server, data={"message": "  by form  ", "csrf": page.csrf, "client_id": "f1"}
    )
    assert status == 200
    assert body["text"] == "by form"
    assert body["user"] == "alice"
    assert body["type"] == "message"
    assert (await history(client, server))[-1] == body


async def test_post_json_with_header_token_and_idempotent_retry(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice")
    page = await login(client, server, "alice")
    headers = {"X-CSRF-Token": page.csrf}
    first = await post(client, server, json={"message": "json", "client_id": "k"}, headers=headers)
    again = await post(client, server, json={"message": "json", "client_id": "k"}, headers=headers)
    assert first[0] == again[0] == 200
    assert first[1] == again[1]
    assert await stored_texts(client, server) == ["json"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'["a list"]', "JSON object"),
        (b'"a string"', "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_json_400(
    server: Server, client: aiohttp.ClientSession, body: bytes, reason: str
) -> None:
    page = await login(client, server, "alice")
    status, answer = await post(
        client,
        server,
        data=body,
        headers={"Content-Type": "application/json", "X-CSRF-Token": page.csrf},
    )
    assert status == 400
    assert answer["error"] == "bad_json"
    assert reason in answer["reason"]
    assert await stored_texts(client, server) == []


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
async def test_missing_or_wrong_csrf_403(
    server: Server, client: aiohttp.ClientSession, token: str | None
) -> None:
    await login(client, server, "alice")
    data = {"message": "forged"}
    if token is not None:
        data["csrf"] = token
    status, answer = await post(client, server, data=data)
    assert status == 403
    assert "CSRF" in answer["reason"]
    assert await stored_texts(client, server) == []


async def test_csrf_of_another_session_403(server: Server, client: aiohttp.ClientSession) -> None:
    await login(client, server, "alice")
    async with new_client() as other:
        bob = await login(other, server, "bob")
    status, _ = await post(client, server, json={"message": "x", "csrf": bob.csrf})
    assert status == 403


async def test_cross_site_origin_403(server: Server, client: aiohttp.ClientSession) -> None:
    page = await login(client, server, "alice")
    status, answer = await post(
        client,
        server,
        json={"message": "from evil", "csrf": page.csrf},
        headers={"Origin": "http://evil.example"},
    )
    assert status == 403
    assert "Origin" in answer["reason"]
    # Sec-Fetch-Site: cross-site without an Origin is refused too
    status, _ = await post(
        client,
        server,
        json={"message": "from evil", "csrf": page.csrf},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert status == 403
    # the page's own origin is welcome
    status, _ = await post(
        client,
        server,
        json={"message": "from home", "csrf": page.csrf},
        headers={"Origin": server.url},
    )
    assert status == 200
    assert await stored_texts(client, server) == ["from home"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [("", "empty"), ("   \n\t ", "empty"), ("x" * 2001, "2000"), (None, "string"), (7, "string")],
)
async def test_empty_or_too_long_400(
    server: Server, client: aiohttp.ClientSession, message: object, reason: str
) -> None:
    page = await login(client, server, "alice")
    status, answer = await post(client, server, json={"message": message, "csrf": page.csrf})
    assert status == 400
    assert answer["error"] == "invalid"
    assert reason in answer["reason"]
    assert await stored_texts(client, server) == []


async def test_429_when_rate_limited(server: Server, client: aiohttp.ClientSession) -> None:
    page = await login(client, server, "alice")
    statuses = []
    for i in range(14):
        status, answer = await post(client, server, json={"message": f"m{i}", "csrf": page.csrf})
        statuses.append(status)
        if status == 429:
            assert answer["error"] == "rate_limited"
            assert "wait" in answer["reason"]
    assert statuses[:10] == [200] * 10
    assert 429 in statuses[10:]
    assert len(await stored_texts(client, server)) == statuses.count(200)


async def test_body_over_16_kib_413(server: Server, client: aiohttp.ClientSession) -> None:
    page = await login(client, server, "alice")
    big = "x" * (17 * 1024)
    status, _ = await post(client, server, json={"message": big, "csrf": page.csrf})
    assert status == 413
    status, _ = await post(client, server, data={"message": big, "csrf": page.csrf})
    assert status == 413
    assert await stored_texts(client, server) == []
    # the server carries on
    await say_lp(client, server, page.csrf, "small")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_invalid_room_name_400_with_reason(
    server: Server, client: aiohttp.ClientSession, method: str
) -> None:
    page = await login(client, server, "alice")
    async with client.request(
        method,
        f"{server.url}{MESSAGES}",
        params={"room": "bad room/../x"},
        json={"message": "hi", "csrf": page.csrf},
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["field"] == "room"
    assert "room names are 1 to 64 characters" in body["reason"]


async def test_no_session_401(server: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{server.url}{MESSAGES}") as response:
        assert response.status == 401
    status, answer = await post(client, server, json={"message": "anon"})
    assert status == 401
    assert answer["error"] == "no_session"


async def test_poll_keeps_the_poller_present(tmp_path: Path) -> None:
    clock = ManualClock()
    async with serving(tmp_path, presence_clock=clock, longpoll_timeout=0.1) as server:
        presence = server.broker.presence
        async with new_client() as client:
            await login(client, server, "alice")
            # eight polls, each half a lease after the last: four leases in all
            for _ in range(8):
                await poll(client, server, last=(await history(client, server))[-1]["id"])
                clock.advance(presence.presence_ttl / 2)
                await presence.reap()
            async with client.get(f"{server.url}/api/rooms/lobby/presence") as response:
                assert (await response.json())["members"] == ["alice"]
            # stop polling: the lease runs out and a leave is published
            clock.advance(presence.presence_ttl / 2)
            await presence.reap()
            kinds = [e["type"] for e in await history(client, server)]
    assert kinds == ["join", "leave"]
