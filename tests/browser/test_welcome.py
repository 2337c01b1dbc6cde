"""The welcome page: a nickname in use is refused with a clear message, the form kept."""

from __future__ import annotations

import pytest

from tests.browser.people import Enter, People, watch

pytestmark = pytest.mark.browser


async def test_nickname_in_use_is_explained_on_the_welcome_page(
    people: People, enter: Enter
) -> None:
    alice = await enter("alice", "websocket")
    _, page = await people.browser()
    problems: list[str] = []
    watch(page, problems)
    await page.goto(f"{people.server.url}/")
    await page.locator("input[name=user]").fill("alice")
    await page.locator("input[name=demo][value=sse]").check()
    await page.get_by_role("button", name="Enter the room").click()
    await page.wait_for_url("**/demo?**")

    alert = page.get_by_role("alert")
    await alert.wait_for()
    message = await alert.text_content() or ""
    assert "'alice' is already in use" in message, message
    assert "lobby" in message
    assert await page.locator("#error").is_visible()
    # What was typed and chosen is still there, to change one thing and go again.
    assert await page.locator("input[name=user]").input_value() == "alice"
    assert await page.locator("input[name=room]").input_value() == "lobby"
    assert await page.locator("input[name=demo][value=sse]").is_checked()
    assert [p.split("?")[0] for p in problems] == [
        f"409 GET {people.server.url}/demo",
        "console: Failed to load resource: the server responded with a status of 409 (Conflict)",
    ]

    await page.locator("input[name=user]").fill("alice2")
    await page.get_by_role("button", name="Enter the room").click()
    await page.wait_for_url("**/sse/room?room=lobby")
    await alice.sees_notice("join", "alice2")
    await alice.sees_members(["alice", "alice2"])
