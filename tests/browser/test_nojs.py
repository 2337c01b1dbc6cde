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

    # Without JavaScript the page changes when its reader reloads it: a plain link.
    assert await carol.count("dave", "hi carol, from a websocket") == 0
    await page.get_by_role("link", name="Reload").click()
    await page.wait_for_load_state()
    assert await carol.count("dave", "hi carol, from a websocket") == 1
    assert await carol.count("carol", "hello without javascript") == 1
    assert sorted(await carol.members()) == ["carol", "dave"]
    assert await carol.notices("join", "dave") == 1
    assert await page.locator("#status").text_content() != "refreshes every 5 s"
