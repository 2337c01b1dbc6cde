"""Nothing the user typed runs: markup sent as a message is shown as text everywhere."""

from __future__ import annotations

import asyncio

import pytest

from tests.browser.people import TECHNIQUES, People, Person

pytestmark = pytest.mark.browser

PAYLOADS = [
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=2</script>",
]


async def test_markup_in_a_message_is_text_on_every_technique(people: People) -> None:
    crowd = await people.enter_all(*((f"mallory_{t}", t) for t in TECHNIQUES), room="hostile")

    async def say_all(person: Person) -> None:
        for payload in PAYLOADS:
            await person.say(payload)

    await asyncio.gather(*(say_all(person) for person in crowd))
    said = [(person.user, payload) for person in crowd for payload in PAYLOADS]
    # Rendered by each page's script as it arrived (for the refresh page: the panel it
    # fetched) ...
    for reader in crowd:
        await reader.sees_all(said)
    # ... and by the server, in the page itself.
    await asyncio.gather(*(reader.page.reload() for reader in crowd))
    for reader in crowd:
        await reader.wait_live()
        assert sorted(await reader.messages()) == sorted(said), reader.technique

    for reader in crowd:
        page = reader.page
        assert await page.evaluate("() => typeof window.__pwned") == "undefined", reader.technique
        assert await page.locator("#thread img, #thread script").count() == 0
