"""Active Refresh over real sockets: the page lists messages, the form says, errors re-render."""

from __future__ import annotations

import html
import re

import aiohttp
import pytest

from tests.support import Server, history, login, publish, thread_messages

PAGE = "/refresh/room"


async def get_page(
    client: aiohttp.ClientSession, server: Server, room: str = "lobby"
) -> tuple[int, str]:
    async with client.get(f"{server.url}{PAGE}", params={"room": room}) as response:
        return response.status, await response.text()


async def say(
    client: aiohttp.ClientSession, server: Server, data: dict[str, str], room: str = "lobby"
) -> aiohttp.ClientResponse:
    async with client.post(
        f"{server.url}{PAGE}", params={"room": room}, data=data, allow_redirects=False
    ) as response:
        await response.read()
        return response


def draft_of(page: str) -> str:
    found = re.search(r'<input name="message" id="message" value="([^"]*)"', page)
    assert found, page
    return html.unescape(found.group(1))


def error_of(page: str) -> str:
    found = re.search(r'<p class="error" id="error" role="alert">([^<]*)</p>', page)
    assert found, page
    return html.unescape(found.group(1))


async def test_page_lists_messages_in_thread(server: Server, client: aiohttp.ClientSession) -> None:
    ids = await publish(server, "lobby", ["first", "<b>second</b>"], user="bob")
    await login(client, server, "alice", demo="refresh")
    status, page = await get_page(client, server)
    assert status == 200
    assert thread_messages(page) == [(ids[0], "bob", "first"), (ids[1], "bob", "<b>second</b>")]
    # text is text: the markup arrives escaped
    assert "&lt;b&gt;second&lt;/b&gt;" in page
    # the page embeds the newest id it rendered (the join after the two messages)
    stored = await history(client, server)
    assert f'data-last-id="{stored[-1]["id"]}"' in page


async def test_page_shows_the_last_50(server: Server, client: aiohttp.ClientSession) -> None:
    await login(client, server, "alice", demo="refresh")
    await publish(server, "lobby", [f"m{i}" for i in range(55)])
    _, page = await get_page(client, server)
    assert [text for _, _, text in thread_messages(page)] == [f"m{i}" for i in range(5, 55)]


async def test_form_post_303_back_and_the_message_is_on_the_page(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="refresh")
    response = await say(client, server, {"message": "hello", "csrf": page.csrf})
    assert response.status == 303
    assert response.headers["Location"] == "/refresh/room?room=lobby"
    _, body = await get_page(client, server)
    assert [(u, t) for _, u, t in thread_messages(body)] == [("alice", "hello")]


async def test_form_post_in_another_room(server: Server, client: aiohttp.ClientSession) -> None:
    page = await login(client, server, "alice", room="kitchen", demo="refresh")
    response = await say(client, server, {"message": "hot", "csrf": page.csrf}, room="kitchen")
    assert response.status == 303
    assert response.headers["Location"] == "/refresh/room?room=kitchen"
    _, lobby = await get_page(client, server)
    assert thread_messages(lobby) == []
    _, kitchen = await get_page(client, server, room="kitchen")
    assert [t for _, _, t in thread_messages(kitchen)] == ["hot"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [("x" * 2001, "at most 2000"), ("   ", "empty")],
)
async def test_invalid_text_re_renders_with_the_typed_text_kept(
    server: Server, client: aiohttp.ClientSession, message: str, reason: str
) -> None:
    page = await login(client, server, "alice", demo="refresh")
    async with client.post(
        f"{server.url}{PAGE}",
        params={"room": "lobby"},
        data={"message": message, "csrf": page.csrf},
        allow_redirects=False,
    ) as response:
        assert response.status == 400
        assert response.content_type == "text/html"
        body = await response.text()
    assert reason in error_of(body)
    assert draft_of(body) == message
    assert thread_messages(body) == []


async def test_missing_csrf_re_renders_403(server: Server, client: aiohttp.ClientSession) -> None:
    await login(client, server, "alice", demo="refresh")
    async with client.post(
        f"{server.url}{PAGE}", data={"message": "keep me"}, allow_redirects=False
    ) as response:
        assert response.status == 403
        body = await response.text()
    assert "CSRF" in error_of(body)
    assert draft_of(body) == "keep me"
    assert [e for e in await history(client, server) if e["type"] == "message"] == []


async def test_rate_limited_re_renders_429_with_the_text_kept(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="refresh")
    statuses = []
    for i in range(13):
        async with client.post(
            f"{server.url}{PAGE}",
            data={"message": f"spam {i}", "csrf": page.csrf},
            allow_redirects=False,
        ) as response:
            statuses.append(response.status)
            body = await response.text()
        if response.status == 429:
            assert "too many messages" in error_of(body)
            assert draft_of(body) == f"spam {i}"
    assert statuses[:10] == [303] * 10
    assert 429 in statuses
    stored = [e for e in await history(client, server) if e["type"] == "message"]
    assert len(stored) == statuses.count(303)


async def test_without_a_session_the_page_sends_you_to_the_welcome(
    server: Server, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{server.url}{PAGE}", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"].startswith("/?")
    async with client.post(
        f"{server.url}{PAGE}", data={"message": "anon"}, allow_redirects=False
    ) as response:
        assert response.status == 303
    assert [e for e in await history(client, server) if e["type"] == "message"] == []


async def test_bad_room_re_renders_the_welcome_400(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="refresh")
    status, body = await get_page(client, server, room="Not OK!")
    assert status == 400
    assert "room names are 1 to 64 characters" in html.unescape(body)


async def test_pages_of_every_technique_render(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="refresh")
    for technique in ("refresh", "longpolling", "websocket", "sse"):
        async with client.get(f"{server.url}/{technique}/room") as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            body = await response.text()
        assert f'data-technique="{technique}"' in body
        assert f'action="/{technique}/room/leave?room=lobby"' in body


async def test_every_asset_a_page_links_is_served(
    server: Server, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{server.url}/") as response:
        pages = [await response.text()]
    await login(client, server, "alice", demo="refresh")
    for technique in ("refresh", "longpolling", "websocket", "sse"):
        async with client.get(f"{server.url}/{technique}/room") as response:
            pages.append(await response.text())
    links = {
        html.unescape(link)
        for page in pages
        for link in re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    }
    assert len(links) >= 6
    for link in sorted(links):
        async with client.get(f"{server.url}{link}") as response:
            assert response.status == 200, link
