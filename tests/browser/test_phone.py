"""At phone width every room page is usable: the message box on screen, no sideways scroll."""

from __future__ import annotations

import pytest

from tests.browser.people import TECHNIQUES, People

pytestmark = pytest.mark.browser

PHONE = (390, 844)


async def test_room_pages_fit_a_phone(people: People) -> None:
    crowd = await people.enter_all(
        *((f"phone_{t}", t) for t in TECHNIQUES), room="phone", viewport=PHONE
    )
    unbroken = "x" * 300
    long_line = "a rather long message that has to wrap over several lines on a phone " * 4
    await crowd[0].say(unbroken)
    await crowd[1].say(long_line.strip())
    await crowd[2].say("https://example.org/" + "a-very-long-path/" * 12)

    width, height = PHONE
    for person in crowd:
        page = person.page
        await person.sees(crowd[2].user, "https://example.org/" + "a-very-long-path/" * 12)
        await person.sees(crowd[0].user, unbroken)
        await person.sees(crowd[1].user, long_line.strip())
        scroll_width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert scroll_width <= width, f"{person.technique}: {scroll_width}px wide"
        for selector in ("#message", "#say button[type=submit]", "form.leave button", "#members"):
            box = await page.locator(selector).bounding_box()
            assert box is not None, (person.technique, selector)
            where = (person.technique, selector)
            assert box["x"] >= 0, where
            assert box["x"] + box["width"] <= width, where
            assert box["y"] >= 0, where
            assert box["y"] + box["height"] <= height, where
        # The newest message is on screen, above the message box.
        last = await page.locator("#thread > li").last.bounding_box()
        say = await page.locator("#say").bounding_box()
        assert last is not None
        assert say is not None
        assert last["y"] + last["height"] <= say["y"] + 1, person.technique
        assert last["x"] + last["width"] <= width
        # The box takes typing.
        await page.locator("#message").fill("typing on a phone")
        assert await page.locator("#message").input_value() == "typing on a phone"
