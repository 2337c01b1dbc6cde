"""Scrolling back: the top of the thread loads the page of history before it, on every
technique, keeping the reader's place; without JavaScript, "Older messages" links do."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.people import TECHNIQUES, Enter, Person
from tests.support import Server, publish

pytestmark = pytest.mark.browser

OLD = [f"old message {i:03}" for i in range(300)]

# Every message shown (history loaded above, then the live thread), in page order.
_SHOWN = """() => [...document.querySelectorAll('#older .message, #thread .message')].map(
  (li) => [li.querySelector('.user').textContent, li.querySelector('.text').textContent])"""

# Scroll the box to its very top; answer the first event on screen and where it sits.
_TO_TOP = """() => {
  const box = document.querySelector('.thread-wrap');
  box.scrollTop = 0;
  const top = box.getBoundingClientRect().top;
  const first = [...document.querySelectorAll('#older > li, #thread > li')]
    .find((li) => li.getBoundingClientRect().bottom > top);
  return { id: first.dataset.id, offset: first.getBoundingClientRect().top - top,
           shown: document.querySelectorAll('#older > li, #thread > li').length };
}"""

# Where the event `id` sits now, from the box's top.
_OFFSET = """(id) => {
  const box = document.querySelector('.thread-wrap');
  const li = document.querySelector(`li[data-id="${id}"]`);
  return li.getBoundingClientRect().top - box.getBoundingClientRect().top;
}"""

_MORE_OR_BEGINNING = """(shown) => document.querySelector('.history-start') !== null
  || document.querySelectorAll('#older > li, #thread > li').length > shown"""

_BEGINNING = "This is the beginning of #lobby\u2019s history."


async def scroll_back_to_the_beginning(person: Person) -> int:
    """Scroll to the top until the page says the room's history begins; answer how many
    pages that took. At each, the event that was at the top stays where it was."""
    page = person.page
    for loads in range(20):
        if await page.locator(".history-start").count():
            return loads
        before: dict[str, Any] = await page.evaluate(_TO_TOP)
        await page.wait_for_function(_MORE_OR_BEGINNING, arg=before["shown"])
        offset = await page.evaluate(_OFFSET, before["id"])
        assert abs(offset - before["offset"]) <= 1, (
            f"{person.technique}: the reading position moved from {before['offset']} to {offset}"
        )
    raise AssertionError(f"{person.technique}: no beginning after 20 pages")


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_scrolling_up_shows_all_history_once_in_order(
    enter: Enter, server: Server, technique: str
) -> None:
    await publish(server, "lobby", OLD, user="bob")
    alice = await enter("alice", technique)
    page = alice.page
    # the page opens on the newest 50 events: 49 messages and alice's join
    await alice.sees_notice("join", "alice")
    assert await alice.messages() == [("bob", text) for text in OLD[-49:]]

    loads = await scroll_back_to_the_beginning(alice)
    assert loads == 6
    assert await page.evaluate(_SHOWN) == [["bob", text] for text in OLD]
    assert await page.locator(".history-start").text_content() == _BEGINNING
    # the history came in above the live log, outside it: it is not announced as new
    assert await page.locator("[role=log] #older, [role=log] #thread #older").count() == 0
    assert await page.locator("#older > li").count() == 251
    assert await page.locator("[role=log] > #thread > li").count() == 50

    # What happens next still comes in at the end, once, and the reader's place stays:
    # on the refresh page the panel refreshed (merged, not replaced) without losing
    # the history above it.
    kept = await page.evaluate(
        """() => { const li = document.querySelector('#thread > li'); li.dataset.kept = 'yes';
                   return li.dataset.id; }"""
    )
    top = await page.evaluate(_TO_TOP)
    await publish(server, "lobby", ["new after scrolling back"], user="carol")
    await alice.sees("carol", "new after scrolling back")
    if technique == "refresh":
        # two more refreshes of the panel
        for _ in range(2):
            await page.clock.fast_forward(5_000)
    assert await page.evaluate(_SHOWN) == [
        *(["bob", text] for text in OLD), ["carol", "new after scrolling back"]
    ]
    still = page.locator(f'#thread > li[data-id="{kept}"]')
    assert await still.get_attribute("data-kept") == "yes"
    assert abs(await page.evaluate(_OFFSET, top["id"]) - top["offset"]) <= 1
    new = page.locator("[role=log] .message", has_text="new after scrolling back")
    assert await new.count() == 1


async def test_the_older_messages_link_works_by_keyboard(enter: Enter, server: Server) -> None:
    await publish(server, "lobby", OLD[:120], user="bob")
    alice = await enter("alice", "websocket")
    page = alice.page
    # focusing the link scrolls it into view, near the top: that may load a page by itself
    await page.get_by_role("link", name="Older messages").focus()
    for _ in range(5):
        if await page.locator(".history-start").count():
            break
        assert await page.evaluate("() => document.activeElement.id") == "older-link"
        shown = await page.locator("#older > li, #thread > li").count()
        await page.keyboard.press("Enter")
        await page.wait_for_function(_MORE_OR_BEGINNING, arg=shown)
    assert await page.locator(".history-start").text_content() == _BEGINNING
    assert await page.evaluate(_SHOWN) == [["bob", text] for text in OLD[:120]]
    # in place: the page did not navigate; the link is gone and focus is on the thread,
    # not lost to the page
    assert page.url == alice.room_url
    assert await page.evaluate("() => document.activeElement.id") == "thread-box"


async def test_without_javascript_older_messages_links_page_back(
    enter: Enter, server: Server
) -> None:
    await publish(server, "lobby", OLD, user="bob")
    carol = await enter("carol", "refresh", java_script=False)
    page = carol.page
    # nothing scrolls the box without JavaScript: it opens at its bottom, the newest
    newest = page.locator("#thread > li").last
    box = await page.locator(".thread-wrap").bounding_box()
    item = await newest.bounding_box()
    assert box is not None
    assert item is not None
    assert box["y"] < item["y"]
    assert item["y"] + item["height"] <= box["y"] + box["height"]

    pages = [await carol.messages()]
    for _ in range(10):
        link = page.get_by_role("link", name="Older messages")
        if not await link.count():
            break
        await link.click()
        await page.wait_for_load_state()
        assert "before=" in page.url
        shown: list[list[str]] = await page.evaluate(_SHOWN)
        pages.insert(0, [(user, text) for user, text in shown])
    assert [len(p) for p in pages] == [1, 50, 50, 50, 50, 50, 49]
    assert [m for p in pages for m in p] == [("bob", text) for text in OLD]
    assert await page.locator(".history-start").text_content() == _BEGINNING
    # and back to the newest
    await page.get_by_role("link", name="Newer messages").click()
    await page.wait_for_url(carol.room_url)
    assert await carol.messages() == [("bob", text) for text in OLD[-49:]]
