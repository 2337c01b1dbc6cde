"""People, each in a browser context of their own: enter a room, say things, look."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
from playwright.async_api import BrowserContext, ConsoleMessage, Page, Request, Response
from playwright.async_api import TimeoutError as PlaywrightTimeout
from pytest_playwright_asyncio.pytest_playwright import CreateContextCallback

from tests.support import Server, login

__all__ = ["LIVE", "TECHNIQUES", "Enter", "People", "Person", "Speaker"]

TECHNIQUES = ("refresh", "longpolling", "websocket", "sse")

# How long a page may take to show what someone said. The refresh page reloads
# its panel every 5 s, so it gets more.
LIVE = 5_000
REFRESH = 8_000

_FIND = """([user, text]) => [...document.querySelectorAll('#thread .message')].filter(
  (li) => li.querySelector('.user').textContent === user
       && li.querySelector('.text').textContent === text).length"""

_NOTICE = """([kind, user]) => [...document.querySelectorAll('#thread .notice.' + kind)].filter(
  (li) => li.querySelector('.user').textContent === user).length"""

_ALL = """() => [...document.querySelectorAll('#thread .message')].map(
  (li) => [li.querySelector('.user').textContent, li.querySelector('.text').textContent])"""

# The same multiset, whatever the order: both sides sorted the same way, in the page.
_SAME = """(have, want) => {
  const key = (x) => JSON.stringify(x);
  const a = have.map(key).sort(), b = want.map(key).sort();
  return a.length === b.length && a.every((k, i) => k === b[i]);
}"""

_MEMBERS = "() => [...document.querySelectorAll('#members li')].map((li) => li.textContent.trim())"


@dataclass
class Person:
    user: str
    technique: str
    room: str
    server: Server
    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)
    # a test that cuts connections on purpose expects failed requests
    tolerate_problems: bool = False
    # a refresh page on Playwright's clock: waiting jumps to its next 5 s refresh
    quick: bool = False

    @property
    def patience(self) -> int:
        return REFRESH if self.technique == "refresh" else LIVE

    @property
    def room_url(self) -> str:
        return f"{self.server.url}/{self.technique}/room?room={self.room}"

    async def say(self, text: str) -> None:
        """Type into the message box and send, as a person would."""
        await self.page.locator("#message").fill(text)
        await self.page.locator("#say button[type=submit]").click()

    async def count(self, user: str, text: str) -> int:
        return int(await self.page.evaluate(_FIND, [user, text]))

    async def until(self, expression: str, arg: object, wait_ms: int | None = None) -> None:
        """Wait until the page function `expression`(arg) is true."""
        timeout = wait_ms or self.patience
        if not self.quick:
            await self.page.wait_for_function(expression, arg=arg, timeout=timeout)
            return
        # Skip the page's clock to its next refresh rather than sit through 5 s.
        for _ in range(max(1, timeout // 500)):
            await self.page.clock.fast_forward(5_000)
            try:
                await self.page.wait_for_function(expression, arg=arg, timeout=500)
            except PlaywrightTimeout:
                continue
            return
        raise PlaywrightTimeout(f"{expression} {arg!r}: not true after {timeout} ms")

    async def sees(self, user: str, text: str, wait_ms: int | None = None) -> None:
        """Wait until `user`'s message `text` is in the thread."""
        try:
            await self.until(f"(args) => ({_FIND})(args) > 0", [user, text], wait_ms)
        except PlaywrightTimeout:
            raise AssertionError(
                f"{self.user} ({self.technique}) does not see {user}: {text!r}; "
                f"thread: {await self.thread()}"
            ) from None

    async def messages(self) -> list[tuple[str, str]]:
        """(user, text) of every message in the thread, in order."""
        pairs: list[list[str]] = await self.page.evaluate(_ALL)
        return [(user, text) for user, text in pairs]

    async def sees_all(self, expected: list[tuple[str, str]], wait_ms: int | None = None) -> None:
        """Wait until the thread holds exactly these messages, once each, in any order."""
        want = [list(pair) for pair in expected]
        try:
            await self.until(
                f"(want) => ({_SAME})(({_ALL})(), want)",
                want,
                wait_ms,
            )
        except PlaywrightTimeout:
            raise AssertionError(
                f"{self.user} ({self.technique}) wants {want}, sees {await self.messages()}"
            ) from None

    async def sees_notice(self, kind: str, user: str, wait_ms: int | None = None) -> None:
        try:
            await self.until(f"(args) => ({_NOTICE})(args) > 0", [kind, user], wait_ms)
        except PlaywrightTimeout:
            raise AssertionError(
                f"{self.user} ({self.technique}) does not see {user} {kind}; "
                f"thread: {await self.thread()}"
            ) from None

    async def notices(self, kind: str, user: str) -> int:
        return int(await self.page.evaluate(_NOTICE, [kind, user]))

    async def members(self) -> list[str]:
        names: list[str] = await self.page.evaluate(_MEMBERS)
        return names

    async def sees_members(self, expected: list[str], wait_ms: int | None = None) -> None:
        try:
            await self.until(
                f"(want) => ({_SAME})(({_MEMBERS})(), want)",
                expected,
                wait_ms,
            )
        except PlaywrightTimeout:
            raise AssertionError(
                f"{self.user} ({self.technique}) wants members {sorted(expected)}, "
                f"sees {await self.members()}; thread: {await self.thread()}"
            ) from None

    async def thread(self) -> list[str]:
        """What the thread shows, one line per item, for failure messages."""
        lines = await self.page.locator("#thread > li").all_inner_texts()
        return [" ".join(line.split()) for line in lines]

    async def wait_live(self) -> None:
        """The page's script is connected (not for the refresh page, which has no connection)."""
        if self.technique != "refresh":
            await self.page.locator("#status[data-state=live]").wait_for(timeout=LIVE)


class Enter(Protocol):
    def __call__(
        self,
        user: str,
        technique: str,
        room: str = "lobby",
        *,
        java_script: bool = True,
        viewport: tuple[int, int] | None = None,
        tolerate_problems: bool = False,
        real_clock: bool = False,
        via_form: bool = False,
    ) -> Awaitable[Person]: ...


class People:
    def __init__(self, new_context: CreateContextCallback, server: Server) -> None:
        self._new_context = new_context
        self.server = server
        self.everyone: list[Person] = []

    async def browser(
        self, *, java_script: bool = True, viewport: tuple[int, int] | None = None
    ) -> tuple[BrowserContext, Page]:
        options: dict[str, Any] = {"java_script_enabled": java_script}
        if viewport is not None:
            options["viewport"] = {"width": viewport[0], "height": viewport[1]}
        context = await self._new_context(**options)
        return context, await context.new_page()

    async def enter_all(
        self, *people: tuple[str, str], room: str = "lobby", **options: Any
    ) -> list[Person]:
        """Several people enter at once (in no particular order): (user, technique) each."""
        return list(await asyncio.gather(*(self.enter(u, t, room, **options) for u, t in people)))

    async def enter(
        self,
        user: str,
        technique: str,
        room: str = "lobby",
        *,
        java_script: bool = True,
        viewport: tuple[int, int] | None = None,
        tolerate_problems: bool = False,
        real_clock: bool = False,
        via_form: bool = False,
    ) -> Person:
        """Open a new browser context, land in the room: through the welcome form, or
        straight to the address that form leads to (a little quicker).

        A refresh page with JavaScript runs on Playwright's clock (time still flows) unless
        `real_clock`: waiting for it skips ahead to its next refresh.
        """
        context, page = await self.browser(java_script=java_script, viewport=viewport)
        quick = technique == "refresh" and java_script and not real_clock
        if quick:
            await page.clock.install()
        person = Person(
            user,
            technique,
            room,
            self.server,
            context,
            page,
            tolerate_problems=tolerate_problems,
            quick=quick,
        )
        watch(page, person.problems)
        self.everyone.append(person)
        if via_form:
            await page.goto(f"{self.server.url}/")
            await page.locator("input[name=user]").fill(user)
            await page.locator("input[name=room]").fill(room)
            await page.locator(f"input[name=demo][value={technique}]").check()
            await page.locator("#welcome button[type=submit]").click()
            await page.wait_for_url(f"**/{technique}/room?room={room}")
        else:
            query = urlencode({"user": user, "room": room, "demo": technique})
            await page.goto(f"{self.server.url}/demo?{query}")
            assert page.url == person.room_url, page.url
        await person.wait_live()
        return person

    def assert_clean(self) -> None:
        """No console errors, CSP violations, script errors or failed requests on any page."""
        for person in self.everyone:
            if not person.tolerate_problems:
                assert not person.problems, f"{person.user} ({person.technique}): {person.problems}"


def watch(page: Page, problems: list[str]) -> None:
    """Collect what a person would see in the browser's developer tools as red."""

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    def page_error(error: Exception) -> None:
        problems.append(f"script error: {error}")

    def response(response: Response) -> None:
        if response.status >= 400:
            problems.append(f"{response.status} {response.request.method} {response.url}")

    def request_failed(request: Request) -> None:
        failure = request.failure or ""
        # A page left while a long poll or an event stream was open: that is no failure.
        if "ERR_ABORTED" not in failure:
            problems.append(f"failed {request.method} {request.url}: {failure}")

    page.on("console", console)
    page.on("pageerror", page_error)
    page.on("response", response)
    page.on("requestfailed", request_failed)


class Speaker:
    """Bob, on a plain HTTP client: he keeps talking whatever happens to Alice's page."""

    def __init__(self, client: aiohttp.ClientSession, server: Server, room: str) -> None:
        self.client, self.server, self.room = client, server, room
        self.csrf = ""

    async def enter(self) -> None:
        self.csrf = (await login(self.client, self.server, "bob", self.room)).csrf

    async def poll(self) -> None:
        """What his long-poll page does whenever it is loaded or polls: keeps him in the
        room, and brings him back in after a restart lost every presence."""
        async with self.client.get(
            f"{self.server.url}/longpolling/room", params={"room": self.room}
        ) as response:
            assert response.status == 200, await response.text()

    async def say(self, text: str) -> str:
        async with self.client.post(
            f"{self.server.url}/longpolling/room/messages",
            params={"room": self.room},
            json={"message": text},
            headers={"X-CSRF-Token": self.csrf},
        ) as response:
            assert response.status == 200, await response.text()
            event = await response.json()
        event_id: str = event["id"]
        return event_id
