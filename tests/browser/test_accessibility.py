"""Accessible pages: axe-core finds nothing serious or critical on the welcome page and the
four room pages (with messages, presence and an error showing, in light and dark); the
thread and the member count are polite live regions; every control has a name; focus
is visible and moves in order.

axe-core comes from the axe-playwright-python package, whose async `Axe.run` evaluates
its bundled axe.min.js in the page (through Playwright, so the page's CSP allows it).
Run with `-rP` to read each page's results.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import pytest
from axe_playwright_python.async_playwright import Axe  # type: ignore[import-untyped]
from playwright.async_api import Page

from tests.browser.people import TECHNIQUES, Enter, People, Person
from tests.support import Server, publish

pytestmark = pytest.mark.browser

# the impacts this project does not ship
BLOCKING = ("serious", "critical")
SCHEMES: tuple[Literal["light", "dark"], ...] = ("light", "dark")

_axe = Axe()


async def axe_check(page: Page, name: str) -> None:
    """Run axe-core in light and dark; print what it found; fail on serious or critical."""
    for scheme in SCHEMES:
        await page.emulate_media(color_scheme=scheme)
        results = await _axe.run(page, options=None)
        found: dict[str, Any] = results.response
        violations = found["violations"]
        impacts = Counter(v["impact"] for v in violations)
        print(
            f"axe {name} ({scheme}): {len(violations)} violations "
            f"{dict(sorted(impacts.items()))} {[v['id'] for v in violations]}; "
            f"incomplete {[i['id'] for i in found['incomplete']]}; "
            f"{len(found['passes'])} rules passed"
        )
        blocking = [v for v in violations if v["impact"] in BLOCKING]
        assert not blocking, results.generate_report()
    await page.emulate_media(color_scheme=None)


async def ax_nodes(page: Page) -> list[dict[str, Any]]:
    """The browser's accessibility tree, as a screen reader gets it."""
    cdp = await page.context.new_cdp_session(page)
    try:
        tree = await cdp.send("Accessibility.getFullAXTree")
    finally:
        await cdp.detach()
    nodes: list[dict[str, Any]] = tree["nodes"]
    return [n for n in nodes if not n.get("ignored")]


def prop(node: dict[str, Any], name: str) -> Any:
    for p in node.get("properties", []):
        if p["name"] == name:
            return p["value"].get("value")
    return None


def named(nodes: list[dict[str, Any]], roles: set[str]) -> list[tuple[str, str]]:
    """(role, accessible name) of every node with one of `roles`."""
    return [
        (n["role"]["value"], (n.get("name") or {}).get("value", ""))
        for n in nodes
        if n.get("role", {}).get("value") in roles
    ]


CONTROLS = {"button", "link", "textbox", "radio", "combobox", "checkbox"}


async def test_the_welcome_page(people: People, enter: Enter) -> None:
    await enter("bob", "websocket", room="kitchen")
    _, page = await people.browser()
    # the welcome page as it is sent back: an error showing, a room in use listed
    await page.goto(f"{people.server.url}/?room=kitchen&error=taken")
    await page.get_by_role("alert").wait_for()
    await axe_check(page, "welcome")
    controls = named(await ax_nodes(page), CONTROLS)
    assert ("button", "Enter the room") in controls
    assert all(name for _, name in controls), controls

    # focus starts in the nickname box and moves down the form, each visibly
    assert await focused(page) == ("input", "Nickname", True)
    order = [await tab(page) for _ in range(4)]
    assert order == [
        ("input", "Room", True),
        ("input", "WebSocket", True),
        ("button", "Enter the room", True),
        ("a", "#kitchen", True),
    ]


async def settle_with_an_error(alice: Person, bob: Person) -> None:
    """Both have spoken; both are here; then alice's message is refused and says why."""
    await alice.say(f"hello from {alice.technique}")
    await bob.say("hi alice")
    for person in (alice, bob):
        await person.sees("alice", f"hello from {alice.technique}")
        await person.sees("bob", "hi alice")
    await alice.sees_members(["alice", "bob"])
    page = alice.page
    # longer than the server takes: the box's maxlength is taken off, as a script could
    await page.evaluate("() => document.getElementById('message').removeAttribute('maxlength')")
    await alice.say("x" * 2001)
    await page.locator("#error").wait_for(state="visible")
    assert "at most 2000" in (await page.locator("#error").text_content() or "")
    # the refusal is expected; nothing else went red
    alice.problems[:] = [
        p for p in alice.problems
        if "400" not in p
    ]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_room_page(enter: Enter, server: Server, technique: str) -> None:
    await publish(server, "lobby", [f"earlier {i}" for i in range(60)], user="carol")
    alice = await enter("alice", technique)
    page = alice.page
    count = page.locator("#member-count")
    assert await count.get_attribute("aria-live") == "polite"
    assert await count.text_content() == "1 person here"
    bob = await enter("bob", "websocket")
    # presence: the polite region says it (and the log has the join)
    await alice.until(
        "() => document.getElementById('member-count').textContent === '2 people here'", None
    )
    await settle_with_an_error(alice, bob)
    await axe_check(page, f"{technique} room")

    nodes = await ax_nodes(page)
    controls = named(nodes, CONTROLS)
    assert all(name for _, name in controls), controls
    assert ("button", "Leave") in controls
    assert ("button", "Send") in controls
    assert ("textbox", "Message #lobby") in controls
    assert ("link", "Older messages") in controls
    # the thread is a polite log; the member count a polite live region
    logs = [n for n in nodes if n.get("role", {}).get("value") == "log"]
    assert [prop(n, "live") for n in logs] == ["polite"]
    # the polite live regions a screen reader hears: the log and the member count (the
    # history loaded above the log is in neither)
    polite = named([n for n in nodes if prop(n, "live") == "polite"], {"log", "paragraph"})
    assert polite == [("log", "Latest messages"), ("paragraph", "")]
    # new messages are inside the log; the messages are items of its list
    assert await page.locator("[role=log] #thread .message", has_text="hi alice").count() == 1
    assert await page.locator("[role=alert]#error").is_visible()


@pytest.mark.parametrize("technique", ["refresh", "sse"])
async def test_focus_moves_in_order_and_shows(
    enter: Enter, server: Server, technique: str
) -> None:
    # enough history that the link stays when focusing it scrolls it near the top, which
    # loads a page by itself (at the beginning it would go, and focus to the thread)
    await publish(server, "lobby", [f"earlier {i}" for i in range(200)], user="carol")
    alice = await enter("alice", technique)
    order = [await tab(alice.page) for _ in range(5)]
    assert order == [
        ("button", "Leave", True),
        ("section", "Messages in #lobby", True),
        ("a", "Older messages", True),
        ("input", "Message #lobby", True),
        ("button", "Send", True),
    ]


# The focused element: its tag, its name (label, aria-label or text) and whether a focus
# ring shows (an outline of some width, not "none").
_FOCUSED = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const label = el.labels && el.labels.length
    ? [...el.labels[0].childNodes].filter((n) => n.nodeType === 3 || n.tagName === 'SPAN')
        .map((n) => n.textContent.trim()).filter(Boolean)[0]
    : null;
  const name = el.getAttribute('aria-label') || label || el.textContent.trim();
  const ring = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
  return [el.tagName.toLowerCase(), name, ring];
}"""


async def focused(page: Page) -> tuple[str, str, bool]:
    tag, name, ring = await page.evaluate(_FOCUSED)
    return tag, name, ring


async def tab(page: Page) -> tuple[str, str, bool]:
    await page.keyboard.press("Tab")
    return await focused(page)
