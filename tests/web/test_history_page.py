"""Room pages page back through history: the "Older messages" link (`?before=C`), the
beginning of the room's history, and Active Refresh reloading itself without JavaScript."""

from __future__ import annotations

import html
import re

import aiohttp
import pytest

from chatroom.web.state import TECHNIQUES
from tests.support import Server, history, login, publish, thread_items

BEGINNING = "This is the beginning of #{room}\u2019s history."
META_REFRESH = '<noscript><meta http-equiv="refresh" content="5"></noscript>'

_OLDER = re.compile(r'<a id="older-link" href="([^"]+)"')
_NEWER = re.compile(
    r'<p class="history-gap" id="history-gap">\s*<a href="([^"]+)">Newer messages</a>'
)
_LAST = re.compile(r'data-last-id="([^"]*)"')


async def get(client: aiohttp.ClientSession, server: Server, path: str) -> tuple[int, str]:
    async with client.get(server.url + path, allow_redirects=False) as response:
        return response.status, await response.text()


def older_link(page: str) -> str | None:
    found = _OLDER.search(page)
    return html.unescape(found.group(1)) if found else None


def ids(page: str, list_id: str) -> list[str]:
    return [item[0] for item in thread_items(page, list_id)]


def head_of(page: str) -> str:
    return html.unescape(_LAST.search(page).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_older_messages_pages_back_to_the_beginning(
    server: Server, client: aiohttp.ClientSession, technique: str
) -> None:
    await login(client, server, "alice", demo=technique)
    await publish(server, "lobby", [f"m{i}" for i in range(130)])
    everything = [event["id"] for event in await history(client, server)]
    assert len(everything) == 131  # alice's join, then the 130 messages

    status, page = await get(client, server, f"/{technique}/room?room=lobby")
    assert status == 200
    assert ids(page, "thread") == everything[-50:]
    assert ids(page, "older") == []
    assert BEGINNING.format(room="lobby") not in page
    pages = [everything[-50:]]
    link = older_link(page)
    for _ in range(5):
        if link is None:
            break
        assert link == f"/{technique}/room?room=lobby&before={pages[0][0]}"
        status, page = await get(client, server, link)
        assert status == 200
        # a page of older history: above the live thread, which is empty, and a way back
        assert ids(page, "thread") == []
        assert head_of(page) == everything[-1]
        newer = _NEWER.search(page)
        assert newer is not None
        assert html.unescape(newer.group(1)) == f"/{technique}/room?room=lobby"
        pages.insert(0, ids(page, "older"))
        link = older_link(page)
    assert [len(p) for p in pages] == [31, 50, 50]
    assert [event_id for p in pages for event_id in p] == everything
    assert BEGINNING.format(room="lobby") in page
    # the first page ends with the room's first event: alice's join
    assert thread_items(page, "older")[0][1:3] == ("join", "alice")


async def test_a_room_whose_history_fits_says_where_it_begins(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", room="kitchen", demo="websocket")
    # 50 events in all: the join and 49 messages, exactly one page
    await publish(server, "kitchen", [f"m{i}" for i in range(49)])
    _, page = await get(client, server, "/websocket/room?room=kitchen")
    assert len(ids(page, "thread")) == 50
    assert BEGINNING.format(room="kitchen") in page
    assert older_link(page) is None

    await publish(server, "kitchen", ["one more"])
    _, page = await get(client, server, "/websocket/room?room=kitchen")
    assert BEGINNING.format(room="kitchen") not in page
    first = ids(page, "thread")[0]
    assert older_link(page) == f"/websocket/room?room=kitchen&before={first}"
    _, older = await get(client, server, f"/websocket/room?room=kitchen&before={first}")
    assert [item[1:3] for item in thread_items(older, "older")] == [("join", "alice")]
    assert BEGINNING.format(room="kitchen") in older


@pytest.mark.parametrize(
    "query",
    [
        "before=nope",
        "before=abc-",
        "before=-5",
        "before=ABC-5",
        "before=abc-%D9%A3",
        "before=" + "a" * 40 + "-1",
        "before=abc-1&before=abc-2",
    ],
)
async def test_a_bad_older_messages_link_is_400_and_changes_nothing(
    server: Server, client: aiohttp.ClientSession, query: str
) -> None:
    await login(client, server, "alice", demo="longpolling")
    status, page = await get(client, server, f"/longpolling/room?room=kitchen&{query}")
    assert status == 400
    # the welcome page says why, with the room filled in
    assert 'id="welcome"' in page
    assert "before" in page
    assert re.search(r'<p class="error" id="error" role="alert">[^<]*before', page), page
    # the page did not enter the room it names
    async with client.get(f"{server.url}/api/rooms/kitchen/presence") as response:
        assert (await response.json())["members"] == []
    assert await server.broker.history("kitchen", None, 10) == []


async def test_an_empty_before_is_the_newest_page(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="sse")
    status, page = await get(client, server, "/sse/room?room=lobby&before=")
    assert status == 200
    assert 'id="history-gap"' not in page
    assert [item[1:3] for item in thread_items(page)] == [("join", "alice")]


async def test_an_id_of_another_stream_names_nothing_here(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    await publish(server, "lobby", ["hello"])
    status, page = await get(client, server, "/websocket/room?room=lobby&before=zzzzzzzz-2")
    assert status == 200
    assert ids(page, "older") == []
    assert ids(page, "thread") == []
    assert BEGINNING.format(room="lobby") in page


async def test_active_refresh_reloads_itself_without_javascript(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="refresh")
    _, page = await get(client, server, "/refresh/room?room=lobby")
    head = page.split("</head>")[0]
    assert META_REFRESH in head
    # with JavaScript the noscript is never a tag: refresh.js refreshes the panel instead
    assert page.count('http-equiv="refresh"') == 1
    assert "Reload</a>" not in page
    # a page of older history stays still while it is read
    await publish(server, "lobby", [f"m{i}" for i in range(60)])
    _, page = await get(client, server, "/refresh/room?room=lobby")
    link = older_link(page)
    assert link is not None
    _, older = await get(client, server, link)
    assert 'http-equiv="refresh"' not in older


async def test_a_refused_message_stays_on_screen_without_javascript(
    server: Server, client: aiohttp.ClientSession
) -> None:
    """The answer to a refused POST shows the reason and keeps the draft: a reload five
    seconds later would lose both, so that page does not reload itself."""
    who = await login(client, server, "alice", demo="refresh")
    async with client.post(
        f"{server.url}/refresh/room?room=lobby",
        data={"csrf": who.csrf, "message": "x" * 2001},
        allow_redirects=False,
    ) as response:
        assert response.status == 400
        page = await response.text()
    assert 'http-equiv="refresh"' not in page
    assert "x" * 2001 in page  # the draft, to shorten and send again


@pytest.mark.parametrize("technique", ["longpolling", "websocket", "sse"])
async def test_the_other_pages_do_not_reload(
    server: Server, client: aiohttp.ClientSession, technique: str
) -> None:
    await login(client, server, "alice", demo=technique)
    _, page = await get(client, server, f"/{technique}/room?room=lobby")
    assert 'http-equiv="refresh"' not in page


async def test_the_thread_is_a_log_and_older_history_is_outside_it(
    server: Server, client: aiohttp.ClientSession
) -> None:
    login_page = await login(client, server, "alice", demo="websocket")
    page = login_page.page
    log = re.search(r'<div class="log" role="log"[^>]*>\s*<ol id="thread"', page)
    assert log is not None, page
    # #older comes before the log, closed before it opens
    assert page.index('<ol id="older"') < page.index("</ol>") < log.start()
    assert re.search(r'id="member-count" aria-live="polite"[^>]*>1 person here<', page)
