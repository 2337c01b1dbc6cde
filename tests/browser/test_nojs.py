"""Active Refresh needs no JavaScript: a form, a 303, and a reload."""

from __future__ import annotations

import pytest
from playwright.async_api import Response

from tests.browser.people import Enter

pytestmark = pytest.mark.browser


async def test_refresh_page_works_with_javascript_off(enter: Enter) -> None:
    carol = await enter("carol", "refresh", java_script=False)
    page = carol.page
    answers: list[Response] = []
    page.on("response", lambda r: answers.append(r) if "/static/" not in r.url else None)

    await carol.say("hello without javascript")
    await page.wait_for_url(carol.room_url)
    assert [(r.request.method, r.status, r.url) for r in answers] == [
        ("POST", 303, carol.room_url),
        ("GET", 200, carol.room_url),
    ]
    assert await carol.count("carol", "hello without javascript") == 1
    assert await page.locator("#message").input_value() == ""

    dave = await enter("dave", "websocket")
    await dave.sees("carol", "hello without javascript")
    await dave.say("hi carol, from a websocket")
    await dave.sees("dave", "hi carol, from a websocket")

    # Without JavaScript the page reloads itself (<meta http-equiv="refresh"> in a
    # <noscript>), as Active Refresh says, with nobody touching it.
    assert await page.locator("a", has_text="Reload").count() == 0
    if await carol.count("dave", "hi carol, from a websocket") == 0:
        async with page.expect_navigation(url=carol.room_url, timeout=8_000):
            pass
    assert await carol.count("dave", "hi carol, from a websocket") == 1
    assert await carol.count("carol", "hello without javascript") == 1
    assert sorted(await carol.members()) == ["carol", "dave"]
    assert await carol.notices("join", "dave") == 1
    # what the server wrote: refresh.js did not run
    assert await page.locator("#status").text_content() == "reloads every 5 s"


async def test_with_javascript_the_refresh_page_does_not_reload(enter: Enter) -> None:
    erin = await enter("erin", "refresh")
    # the noscript is text when scripts run: no meta refresh in the document
    assert await erin.page.locator("meta[http-equiv=refresh]").count() == 0
    assert await erin.page.locator("#status").text_content() == "refreshes every 5 s"
