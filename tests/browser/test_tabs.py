"""Many tabs in one browser share one connection per technique (static/share.js).

A browser holds 6 HTTP/1.1 connections to a host: with an event stream or a parked
poll per tab, the 7th tab never loaded. The tabs now share one connection, held by a
SharedWorker, or without one by a leader tab relaying over BroadcastChannel (elected
with Web Locks), or without those by each tab.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, Route
from pytest_playwright_asyncio.pytest_playwright import CreateContextCallback

from tests.browser.people import LIVE, Person, Speaker, watch
from tests.support import UNLIMITED, Server, eventually, new_client, start_server

pytestmark = pytest.mark.browser

TECHNIQUES = ["longpolling", "sse", "websocket"]

# Scripts run before the page's own: take away what the sharing would use first.
NO_WORKER = "delete window.SharedWorker;"
NO_SHARING = "delete window.SharedWorker; delete window.BroadcastChannel;"

# This tab's own lock (share.js attaches once it holds it) is granted when the test
# calls grantTabLock().
HELD_TAB_LOCK = """(() => {
  const locks = navigator.locks;
  const request = locks.request.bind(locks);
  const granted = new Promise((resolve) => { window.grantTabLock = resolve; });
  locks.request = (name, ...rest) => String(name).startsWith('chatroom-tab-')
    ? granted.then(() => request(name, ...rest))
    : request(name, ...rest);
})();"""

# While holdAttaches is true, this tab's attaches wait for letAttachesGo().
HELD_ATTACH = """(() => {
  const post = BroadcastChannel.prototype.postMessage;
  const held = [];
  window.holdAttaches = false;
  window.heldAttaches = () => held.length;
  window.letAttachesGo = () => {
    window.holdAttaches = false;
    for (const [channel, msg] of held.splice(0)) post.call(channel, msg);
  };
  BroadcastChannel.prototype.postMessage = function (msg) {
    if (window.holdAttaches && msg && msg.t === 'attach') held.push([this, msg]);
    else post.call(this, msg);
  };
})();"""

# The texts of the messages a leader relays to the tabs, as this tab hears them. This
# channel is opened after share.js's: a relay reaches share.js first (a browser hands a
# message to the channels of a page in the order they were opened).
_LISTEN = """(technique) => {
  window.relayed = [];
  new BroadcastChannel(`chatroom-${technique}-down`).onmessage = (e) => {
    if (e.data.t !== 'events') return;
    for (const ev of e.data.events) if (ev.type === 'message') window.relayed.push(ev.text);
  };
}"""

_IDS = """() => [...document.querySelectorAll('#thread > li[data-id]')].map(
  (li) => li.dataset.id)"""


class Browser:
    """One browser (one context, so one cookie jar): alice, in tabs."""

    def __init__(self, context: BrowserContext, server: Server, technique: str) -> None:
        self.context, self.server, self.technique = context, server, technique
        self.tabs: list[Person] = []

    async def open(self, room: str, *, enter: bool = False, init: str | None = None) -> Person:
        """A new tab on the room's page (through /demo first when `enter`); `init` runs
        before the page's own scripts."""
        page = await self.context.new_page()
        if init is not None:
            await page.add_init_script(init)
        tab = Person("alice", self.technique, room, self.server, self.context, page)
        watch(page, tab.problems)
        if enter:
            query = urlencode({"user": "alice", "room": room, "demo": self.technique})
            await page.goto(f"{self.server.url}/demo?{query}")
        else:
            await page.goto(tab.room_url)
        assert page.url == tab.room_url, page.url
        await tab.wait_live()
        self.tabs.append(tab)
        return tab

    def of(self, room: str) -> list[Person]:
        return [t for t in self.tabs if t.room == room]

    async def close(self, tab: Person) -> None:
        self.tabs.remove(tab)
        await tab.page.close()

    def assert_clean(self) -> None:
        for tab in self.tabs:
            assert not tab.problems, tab.problems


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """The app over SQLite, without rate limits: bob says a dozen things in a row."""
    srv = await start_server(f"sqlite:///{tmp_path / 'chat.db'}", **UNLIMITED)
    try:
        yield srv
    finally:
        await srv.stop()


async def a_browser(
    new_context: CreateContextCallback, server: Server, technique: str, init: str | None = None
) -> Browser:
    context = await new_context()
    if init is not None:
        await context.add_init_script(init)
    return Browser(context, server, technique)


async def share_mode(page: Page) -> str | None:
    mode: str | None = await page.evaluate("() => document.getElementById('room').dataset.share")
    return mode


async def open_tabs(b: Browser, rooms: dict[str, int]) -> None:
    """Enter each room through /demo, then open its other tabs on its page."""
    for room, count in rooms.items():
        await b.open(room, enter=True)
        for _ in range(count - 1):
            await b.open(room)


async def is_leader(tab: Person) -> bool:
    leads: bool = await tab.page.evaluate(
        "() => document.getElementById('room').dataset.leader === 'true'")
    return leads


async def hears(tab: Person, text: str) -> None:
    """Wait until a leader's relay of `text` reached the tab (its _LISTEN channel)."""
    await tab.page.wait_for_function("(text) => window.relayed.includes(text)", arg=text,
                                     timeout=LIVE)


async def ids(tab: Person) -> list[str]:
    found: list[str] = await tab.page.evaluate(_IDS)
    return found


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_ten_tabs_in_two_rooms_share_one_connection(
    new_context: CreateContextCallback, server: Server, technique: str
) -> None:
    b = await a_browser(new_context, server, technique)
    await open_tabs(b, {"den": 5, "attic": 5})
    assert len(b.tabs) == 10
    for tab in b.tabs:
        assert await share_mode(tab.page) == "worker"
    # one connection for the ten tabs (a long poll is counted while it is parked)
    await eventually(lambda: server.chat.connections[technique] == 1)
    if technique != "longpolling":
        assert server.broker.subscribers("den") == server.broker.subscribers("attic") == 1

    den, attic = b.of("den"), b.of("attic")
    await den[-1].say("hello from the last den tab")
    await attic[-1].say("hello from the last attic tab")
    for tab in den:
        await tab.sees("alice", "hello from the last den tab")
    for tab in attic:
        await tab.sees("alice", "hello from the last attic tab")
    for tab in den:
        assert await tab.count("alice", "hello from the last den tab") == 1
        assert await tab.count("alice", "hello from the last attic tab") == 0
    for tab in attic:
        assert await tab.count("alice", "hello from the last attic tab") == 1
        assert await tab.count("alice", "hello from the last den tab") == 0
    # every tab says; every tab of its room shows it once
    for n, tab in enumerate(b.tabs):
        await tab.say(f"tab {n} says hi")
    for tab in b.tabs:
        mine = [n for n, t in enumerate(b.tabs) if t.room == tab.room]
        await tab.sees_all(
            [("alice", f"hello from the last {tab.room} tab")]
            + [("alice", f"tab {n} says hi") for n in mine]
        )
    # a page of another kind still loads: the tabs hold one connection, not six
    other = await b.context.new_page()
    response = await other.goto(f"{server.url}/api/rooms", timeout=LIVE)
    assert response is not None
    assert response.ok
    b.assert_clean()


async def test_with_ten_sse_tabs_open_more_pages_still_load(
    new_context: CreateContextCallback, server: Server
) -> None:
    b = await a_browser(new_context, server, "sse")
    await open_tabs(b, {"den": 10})
    assert server.chat.connections["sse"] == 1
    # the 11th and 12th pages: the welcome page and another room's page
    welcome = await b.context.new_page()
    await welcome.goto(f"{server.url}/", timeout=LIVE)
    await welcome.locator("#welcome").wait_for(timeout=LIVE)
    await b.open("attic", enter=True)
    await eventually(lambda: server.chat.connections["sse"] == 1)
    await b.tabs[-1].say("twelve pages, one stream")
    await b.tabs[-1].sees("alice", "twelve pages, one stream")
    b.assert_clean()


async def in_history(server: Server, room: str) -> list[str]:
    async with new_client() as client, client.get(
        f"{server.url}/api/rooms/{room}/history", params={"limit": "500"}
    ) as response:
        return [e["id"] for e in (await response.json())["events"]]


async def exactly_once_each(tabs: list[Person], said: list[str]) -> None:
    """Every tab shows each of `said` once, and the room's events once each, in order."""
    for tab in tabs:
        await tab.sees_all([("bob", text) for text in said])
        shown = await ids(tab)
        order = {event_id: n for n, event_id in enumerate(await in_history(tab.server, tab.room))}
        assert [order[i] for i in shown] == sorted(order[i] for i in set(shown)), shown


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_closing_the_leader_tab_hands_over_without_a_loss_or_a_repeat(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    b = await a_browser(new_context, server, technique, init=NO_WORKER)
    await open_tabs(b, {"den": 4})
    modes = [await share_mode(t.page) for t in b.tabs]
    assert modes == ["channel"] * 4
    leaders = [t for t in b.tabs if await t.page.evaluate(
        "() => document.getElementById('room').dataset.leader === 'true'")]
    assert len(leaders) == 1
    bob = Speaker(client, server, "den")
    await bob.enter()
    said = [f"before {n}" for n in range(3)]
    for text in said:
        await bob.say(text)
    await exactly_once_each(b.tabs, said)

    # the leader goes while bob goes on talking
    closing = asyncio.ensure_future(b.close(leaders[0]))
    for n in range(6):
        said.append(f"during {n}")
        await bob.say(said[-1])
    await closing

    async def one_new_leader() -> bool:
        flags = [await t.page.evaluate(
            "() => document.getElementById('room').dataset.leader === 'true'") for t in b.tabs]
        return flags.count(True) == 1

    await eventually(one_new_leader, within=LIVE / 1000)
    for n in range(3):
        said.append(f"after {n}")
        await bob.say(said[-1])
    await exactly_once_each(b.tabs, said)
    await eventually(lambda: server.chat.connections[technique] == 1)
    # a tab of the new leader says, every tab shows it once
    await b.tabs[-1].say("alice after the handover")
    for tab in b.tabs:
        await tab.sees("alice", "alice after the handover")
        assert await tab.count("alice", "alice after the handover") == 1
    b.assert_clean()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_tab_takes_no_relayed_event_before_its_attach_is_answered(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    """A leader relays to every tab on its channel, a tab that has not attached yet too.
    Taken, a relayed event moved the tab's cursor past one it never showed (E1, relayed
    before its script ran): it attached from there, and E1 was never shown."""
    b = await a_browser(new_context, server, technique, init=NO_WORKER)
    leader = await b.open("den", enter=True)
    bob = Speaker(client, server, "den")
    await bob.enter()
    await bob.say("a0")
    await leader.sees("bob", "a0")

    page = await b.context.new_page()
    await page.add_init_script(HELD_TAB_LOCK)
    tab = Person("alice", technique, "den", server, b.context, page)
    watch(page, tab.problems)
    b.tabs.append(tab)
    asked, answer = asyncio.Event(), asyncio.Event()

    async def hold(route: Route) -> None:
        asked.set()
        await answer.wait()
        await route.continue_()

    await page.route("**/share*.js*", hold)
    going = asyncio.ensure_future(page.goto(tab.room_url))
    try:
        # the page is rendered (after a0); its share.js not run yet
        await asyncio.wait_for(asked.wait(), LIVE / 1000)
        await bob.say("E1")
        await leader.sees("bob", "E1")
        answer.set()
        await asyncio.wait_for(going, LIVE / 1000)
    finally:
        answer.set()
    assert await share_mode(page) == "channel"
    # share.js listens; its lock, and so its attach, waits
    await page.evaluate(_LISTEN, technique)
    await bob.say("E2")
    await hears(tab, "E2")
    assert await tab.messages() == [("bob", "a0")]
    await page.evaluate("() => window.grantTabLock()")
    await tab.wait_live()
    await bob.say("E3")
    await exactly_once_each(b.tabs, ["a0", "E1", "E2", "E3"])
    assert await ids(tab) == await in_history(server, "den")
    b.assert_clean()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_after_a_handover_a_tab_takes_nothing_from_the_new_leader_before_it_attached(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    b = await a_browser(new_context, server, technique, init=NO_WORKER)
    first = await b.open("den", enter=True)
    second = await b.open("den")
    slow = await b.open("den", init=HELD_ATTACH)
    assert await is_leader(first)
    bob = Speaker(client, server, "den")
    await bob.enter()
    await bob.say("before")
    await exactly_once_each(b.tabs, ["before"])

    await slow.page.evaluate("() => { window.holdAttaches = true; }")
    await slow.page.evaluate(_LISTEN, technique)
    await b.close(first)
    # the next in line leads; its hello made the slow tab attach, and that waits
    await second.page.wait_for_function(
        "() => document.getElementById('room').dataset.leader === 'true'", timeout=LIVE)
    await slow.page.wait_for_function("() => window.heldAttaches() > 0", timeout=LIVE)
    await bob.say("H1")
    await hears(slow, "H1")
    assert await slow.messages() == [("bob", "before")]
    await slow.page.evaluate("() => window.letAttachesGo()")
    await bob.say("H2")
    await exactly_once_each(b.tabs, ["before", "H1", "H2"])
    assert await ids(slow) == await in_history(server, "den")
    b.assert_clean()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_closing_the_tab_that_started_the_worker_loses_nothing(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    b = await a_browser(new_context, server, technique)
    await open_tabs(b, {"den": 3})
    bob = Speaker(client, server, "den")
    await bob.enter()
    said = ["before"]
    await bob.say("before")
    await exactly_once_each(b.tabs, said)
    closing = asyncio.ensure_future(b.close(b.tabs[0]))
    for n in range(4):
        said.append(f"during {n}")
        await bob.say(said[-1])
    await closing
    await exactly_once_each(b.tabs, said)
    # a tab opened now starts from its page and misses nothing after it
    late = await b.open("den")
    said.append("after")
    await bob.say("after")
    await exactly_once_each(b.tabs, said)
    assert await share_mode(late.page) == "worker"
    assert server.chat.connections[technique] <= 1
    b.assert_clean()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_without_sharing_each_tab_holds_its_own(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    b = await a_browser(new_context, server, technique, init=NO_SHARING)
    await open_tabs(b, {"den": 2})
    assert [await share_mode(t.page) for t in b.tabs] == ["tab", "tab"]
    bob = Speaker(client, server, "den")
    await bob.enter()
    await bob.say("to each tab")
    await exactly_once_each(b.tabs, ["to each tab"])
    await b.tabs[0].say("from the first tab")
    await b.tabs[1].sees("alice", "from the first tab")
    if technique != "longpolling":
        assert server.chat.connections[technique] == 2
    b.assert_clean()


async def test_a_room_whose_last_tab_closed_is_left_the_others_stay(
    new_context: CreateContextCallback,
) -> None:
    server = await start_server(presence_ttl=1.0)
    try:
        server.broker.presence.linger = 0.2
        server.broker.presence.reap_interval = 0.1
        b = await a_browser(new_context, server, "sse")
        await open_tabs(b, {"den": 2, "attic": 1})
        # one den tab closes: the den is still followed; the attic's last tab closes
        await b.close(b.of("den")[0])
        await b.close(b.of("attic")[0])
        async with new_client() as client:

            async def kinds(room: str) -> list[str]:
                async with client.get(f"{server.url}/api/rooms/{room}/history") as r:
                    return [e["type"] for e in (await r.json())["events"]]

            async def attic_left() -> bool:
                return await kinds("attic") == ["join", "leave"]

            # the shared stream drops the attic (2 s after its last tab) and then the
            # presence lingers; the den's page lease ran out long before
            await eventually(attic_left, within=10)
            assert await kinds("den") == ["join"]
            assert await server.broker.members("den") == ["alice"]
        assert server.chat.connections["sse"] == 1
        b.assert_clean()
    finally:
        await server.stop()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_tab_behind_the_shared_connection_reads_what_it_lacks(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    """A page rendered before the last events (its cursor behind the connection's)
    reads them from the history, then takes the shared events after them."""
    b = await a_browser(new_context, server, technique)
    await open_tabs(b, {"den": 1})
    bob = Speaker(client, server, "den")
    await bob.enter()
    said = [f"m{n}" for n in range(4)]
    for text in said:
        await bob.say(text)
    await exactly_once_each(b.tabs, said)
    kept = await in_history(server, "den")
    # The next page is served as it was before m2 and m3 were said.
    hidden = kept[-2:]

    async def as_before(route: Route) -> None:
        response = await route.fetch()
        html = await response.text()
        for event_id in hidden:
            html, n = re.subn(rf'<li class="message"[^>]*data-id="{event_id}">.*?</li>', "", html,
                              flags=re.DOTALL)
            assert n == 1, html
        html = html.replace(f'data-last-id="{kept[-1]}"', f'data-last-id="{kept[-3]}"')
        await route.fulfill(response=response, body=html)

    await b.context.route(f"{server.url}/{technique}/room?room=den", as_before)
    behind = await b.open("den")
    await b.context.unroute(f"{server.url}/{technique}/room?room=den")
    said.append("m4")
    await bob.say("m4")
    await exactly_once_each(b.tabs, said)
    assert await ids(behind) == await in_history(server, "den")
    b.assert_clean()


async def test_more_rooms_than_one_connection_takes_are_spread_over_more(
    new_context: CreateContextCallback, tmp_path: Path
) -> None:
    server = await start_server(
        f"sqlite:///{tmp_path / 'chat.db'}", max_rooms_per_connection=1, **UNLIMITED
    )
    try:
        b = await a_browser(new_context, server, "sse")
        await open_tabs(b, {"den": 2, "attic": 1})
        # one room per connection: two streams for the three tabs
        await eventually(lambda: server.chat.connections["sse"] == 2)
        await b.of("attic")[0].say("up in the attic")
        await b.of("den")[1].say("down in the den")
        await b.of("attic")[0].sees("alice", "up in the attic")
        for tab in b.of("den"):
            await tab.sees("alice", "down in the den")
            assert await tab.count("alice", "up in the attic") == 0
        b.assert_clean()
    finally:
        await server.stop()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_tab_whose_cursor_is_not_kept_shows_a_reset_once(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    b = await a_browser(new_context, server, technique)
    await open_tabs(b, {"den": 1})
    bob = Speaker(client, server, "den")
    await bob.enter()
    await bob.say("kept")
    await exactly_once_each(b.tabs, ["kept"])

    async def from_a_lost_stream(route: Route) -> None:
        response = await route.fetch()
        html = re.sub(r'data-last-id="[^"]*"', 'data-last-id="feedface-7"', await response.text())
        await route.fulfill(response=response, body=html)

    await b.context.route(f"{server.url}/{technique}/room?room=den", from_a_lost_stream)
    odd = await b.open("den")
    await b.context.unroute(f"{server.url}/{technique}/room?room=den")
    await odd.page.locator("#thread .notice.reset").wait_for(timeout=LIVE)
    await bob.say("after")
    await exactly_once_each(b.tabs, ["kept", "after"])
    assert await odd.page.locator("#thread .notice.reset").count() == 1
    # the other tab's cursor was fine: it was told nothing
    assert await b.tabs[0].page.locator("#thread .notice.reset").count() == 0
    b.assert_clean()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_leave_in_one_tab_ends_its_room_in_every_tab_and_no_other(
    new_context: CreateContextCallback,
    server: Server,
    client: aiohttp.ClientSession,
    technique: str,
) -> None:
    b = await a_browser(new_context, server, technique)
    await open_tabs(b, {"den": 2, "attic": 1})
    leaving, staying = b.of("den")
    await leaving.page.locator("form.leave button").click()
    await leaving.page.wait_for_url(f"{server.url}/?room=den")
    b.tabs.remove(leaving)
    # the other den tab is told, and stops; the attic goes on, on the same connection
    await staying.page.locator("#status[data-state=error]").wait_for(timeout=LIVE)
    assert "left" in await staying.page.locator("#status").inner_text()
    bob = Speaker(client, server, "attic")
    await bob.enter()
    await bob.say("the attic goes on")
    await exactly_once_each(b.of("attic"), ["the attic goes on"])
    await eventually(lambda: server.chat.connections[technique] == 1)
    async with new_client() as other, other.get(
        f"{server.url}/api/rooms/den/presence"
    ) as response:
        assert (await response.json())["members"] == []
    b.assert_clean()
