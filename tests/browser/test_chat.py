"""Two people on two techniques chat both ways; the pages never reload to do it."""

from __future__ import annotations

import pytest
from playwright.async_api import Frame

from tests.browser.people import Enter, Person

pytestmark = pytest.mark.browser

PAIRS = [
    ("websocket", "longpolling"),
    ("sse", "refresh"),
    ("websocket", "sse"),
]


async def stay_put(person: Person) -> list[str]:
    """Mark the page's window and record navigations: a full reload would show in both."""
    navigations: list[str] = []

    def navigated(frame: Frame) -> None:
        if frame == person.page.main_frame:
            navigations.append(frame.url)

    person.page.on("framenavigated", navigated)
    await person.page.evaluate("() => { window.__sameDocument = true; }")
    return navigations


async def still_put(person: Person, navigations: list[str]) -> None:
    assert navigations == [], f"{person.technique} page navigated: {navigations}"
    assert await person.page.evaluate("() => window.__sameDocument") is True


@pytest.mark.parametrize(("one", "other"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
async def test_two_techniques_chat_both_ways(enter: Enter, one: str, other: str) -> None:
    alice = await enter("alice", one, via_form=True)
    # The refresh page on the real clock: it refreshes by itself, every 5 s.
    bob = await enter("bob", other, real_clock=True, via_form=True)
    watched = [(p, await stay_put(p)) for p in (alice, bob)]

    await alice.say(f"hello from alice on {one}")
    await bob.sees("alice", f"hello from alice on {one}")
    await alice.sees("alice", f"hello from alice on {one}")

    await bob.say(f"hi alice, bob on {other} here")
    await alice.sees("bob", f"hi alice, bob on {other} here")
    await bob.sees("bob", f"hi alice, bob on {other} here")

    for person in (alice, bob):
        assert await person.count("alice", f"hello from alice on {one}") == 1
        assert await person.count("bob", f"hi alice, bob on {other} here") == 1
        assert await person.page.locator("#message").input_value() == ""
    for person, navigations in watched:
        await still_put(person, navigations)
    # Each sees the other arrive, and the other's own message is marked as theirs.
    await alice.sees_notice("join", "bob")
    assert await alice.page.locator("#thread .message.mine .text").all_text_contents() == [
        f"hello from alice on {one}"
    ]
