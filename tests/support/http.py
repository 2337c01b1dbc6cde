"""Talking to the server as a browser's page does: log in, poll, say, read pages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Protocol

import aiohttp
from yarl import URL

from chatroom.web.security import COOKIE
from tests.support.server import Server, present

__all__ = [
    "HasUrl",
    "Login",
    "Thread",
    "cookie_of",
    "history",
    "login",
    "poll",
    "press_leave",
    "publish",
    "room_page",
    "say_lp",
    "thread_items",
    "thread_messages",
]


_CSRF = re.compile(r'data-csrf="([^"]+)"')


_LAST = re.compile(r'data-last-id="([^"]*)"')


@dataclass
class Login:
    csrf: str
    last_id: str
    page: str


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


async def login(
    client: aiohttp.ClientSession,
    server: HasUrl,
    user: str,
    room: str = "lobby",
    demo: str = "longpolling",
) -> Login:
    """Claim a nickname through /demo like a browser; return the room page's CSRF token."""
    async with client.get(
        f"{server.url}/demo", params={"user": user, "room": room, "demo": demo}
    ) as response:
        page = await response.text()
        assert response.status == 200, page
    found = room_page(page)
    assert found is not None, page
    return found


def room_page(page: str) -> Login | None:
    """A room page's CSRF token and last id; None if `page` is not a room page."""
    csrf = _CSRF.search(page)
    last = _LAST.search(page)
    if csrf is None or last is None:
        return None
    return Login(csrf.group(1), last.group(1), page)


def cookie_of(client: aiohttp.ClientSession, server: Server) -> str:
    """The signed session cookie the client holds for this server."""
    morsel = client.cookie_jar.filter_cookies(URL(server.url)).get(COOKIE)
    assert morsel is not None, "log in first"
    return morsel.value


async def publish(
    server: Server, room: str, texts: list[str], user: str = "bot", session: str = "bot-sid"
) -> list[str]:
    """Store messages straight through the broker (no rate limit); return their ids.

    The speaker is a member of the room only while it speaks: it enters and leaves
    without a join or a leave event (see present()), and is nobody's presence after.
    """
    await present(server.broker, room, user, session)
    ids = []
    try:
        for text in texts:
            stored = await server.broker.say(room, user, session, text)
            ids.append(stored.event.id)
    finally:
        await server.broker.backend.presence.leave(room, user, session)
    return ids


async def history(
    client: aiohttp.ClientSession, server: Server, room: str = "lobby", limit: int = 500
) -> list[dict[str, Any]]:
    async with client.get(
        f"{server.url}/api/rooms/{room}/history", params={"limit": str(limit)}
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    events: list[dict[str, Any]] = body["events"]
    return events


async def poll(
    client: aiohttp.ClientSession,
    server: Server,
    room: str = "lobby",
    last: str | None = None,
) -> list[dict[str, Any]]:
    params = {"room": room}
    if last is not None:
        params["lastReceived"] = last
    async with client.get(f"{server.url}/longpolling/room/messages", params=params) as response:
        assert response.status == 200, await response.text()
        events: list[dict[str, Any]] = await response.json()
    return events


async def say_lp(
    client: aiohttp.ClientSession,
    server: Server,
    csrf: str,
    text: str,
    room: str = "lobby",
    **fields: Any,
) -> dict[str, Any]:
    """Say through the long-poll POST (JSON); assert it was stored; return the event."""
    async with client.post(
        f"{server.url}/longpolling/room/messages",
        params={"room": room},
        json={"message": text, "csrf": csrf, **fields},
    ) as response:
        assert response.status == 200, await response.text()
        event: dict[str, Any] = await response.json()
    return event


async def press_leave(
    client: aiohttp.ClientSession,
    server: HasUrl,
    csrf: str,
    technique: str = "longpolling",
    room: str = "lobby",
) -> str:
    """Press the room page's Leave button; assert the 303 and return where it leads."""
    async with client.post(
        f"{server.url}/{technique}/room/leave",
        params={"room": room},
        data={"csrf": csrf},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, await response.text()
        return response.headers["Location"]


class Thread(HTMLParser):
    """Collects (id, user, text) of every `#thread .message` item of a page.

    `items` has every event of the thread in page order, notices included, as
    (id, type, user, text): type "message", "join" or "leave"; text "" for a notice.
    `list_id`: another list of events, e.g. "older" (the page of history above the thread).
    """

    def __init__(self, list_id: str = "thread") -> None:
        super().__init__()
        self._list_id = list_id
        self.messages: list[tuple[str, str, str]] = []
        self.items: list[tuple[str, str, str, str]] = []
        self._in_thread = False
        self._item: dict[str, str] | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = (attr.get("class") or "").split()
        if tag == "ol" and attr.get("id") == self._list_id:
            self._in_thread = True
        elif self._in_thread and tag == "li" and "message" in classes:
            self._start_item(attr, "message")
        elif self._in_thread and tag == "li" and "notice" in classes:
            self._start_item(attr, next((c for c in classes if c != "notice"), ""))
        elif self._item is not None and tag == "span" and classes:
            self._field = classes[0] if classes[0] in ("user", "text") else None

    def _start_item(self, attr: dict[str, str | None], kind: str) -> None:
        self._item = {"id": attr.get("data-id") or "", "type": kind, "user": "", "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag == "ol" and self._in_thread:
            self._in_thread = False
        elif tag == "span":
            self._field = None
        elif tag == "li" and self._item is not None:
            item = self._item
            if item["type"] == "message":
                self.messages.append((item["id"], item["user"], item["text"]))
            self.items.append((item["id"], item["type"], item["user"], item["text"]))
            self._item = None

    def handle_data(self, data: str) -> None:
        if self._item is not None and self._field is not None:
            self._item[self._field] += data


def thread_messages(page: str) -> list[tuple[str, str, str]]:
    parser = Thread()
    parser.feed(page)
    parser.close()
    return parser.messages


def thread_items(page: str, list_id: str = "thread") -> list[tuple[str, str, str, str]]:
    """Every event of the page's `#thread` (or `#older`, the page of older history above
    it), notices included: (id, type, user, text)."""
    parser = Thread(list_id)
    parser.feed(page)
    parser.close()
    return parser.items
