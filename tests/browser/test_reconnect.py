"""A page that lost its connection comes back by itself: nothing missed, nothing twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode
from playwright.async_api import WebSocket

from chatroom.app import create_app
from chatroom.config import Settings
from chatroom.web.server import GuardedRunner, listen
from tests.browser.people import Enter, Person, Speaker
from tests.support import SECRET, Server

pytestmark = pytest.mark.browser


async def start_again(server: Server, database: Path) -> None:
    """Start a server that was stopped again: same port, same database."""
    settings = Settings(backend=f"sqlite:///{database}", secret=SECRET, port=0)
    app = create_app(settings)
    runner = GuardedRunner(app, settings, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await listen(runner, "127.0.0.1", server.port)
    server.app, server.runner = app, runner


async def back_live(person: Person) -> None:
    await person.page.locator("#status[data-state=live]").wait_for(timeout=15_000)


async def test_websocket_closed_by_the_server_resumes_from_its_cursor(
    enter: Enter, server: Server, client: aiohttp.ClientSession
) -> None:
    alice = await enter("alice", "websocket", room="resume")
    bob = Speaker(client, server, "resume")
    await bob.enter()
    # Watch the frames of every socket the page opens from now on.
    received: list[str] = []

    def opened(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: received.append(str(payload)))

    alice.page.on("websocket", opened)
    await alice.page.reload()
    await alice.wait_live()

    await bob.say("before the cut")
    await alice.sees("bob", "before the cut")

    assert len(server.chat.sockets) == 1
    for ws in list(server.chat.sockets):
        await ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"test: connection cut")
    missed = [f"while alice was away {n}" for n in range(3)]
    for text in missed:
        await bob.say(text)
    assert not server.chat.sockets, "the page came back before anything was said"

    for text in missed:
        await alice.sees("bob", text)
    await back_live(alice)
    await alice.say("alice is back")
    await alice.sees("alice", "alice is back")

    for text in ["before the cut", *missed]:
        assert await alice.count("bob", text) == 1, text
    # The server sent each event once: the new socket resumed after the last id seen.
    frames = [json.loads(frame) for frame in received]
    ids = [f["id"] for f in frames if f["type"] in ("message", "join", "leave")]
    assert len(ids) == len(set(ids)), received
    # A reconnect is no leave and no join.
    assert await alice.notices("join", "alice") == 1
    assert await alice.notices("leave", "alice") == 0


@pytest.mark.parametrize("technique", ["websocket", "sse", "longpolling"])
async def test_page_comes_back_after_a_server_restart(
    enter: Enter, server: Server, client: aiohttp.ClientSession, tmp_path: Path, technique: str
) -> None:
    # Connections refused while the server is down: the console shows them, as it should.
    alice = await enter("alice", technique, room="restart", tolerate_problems=True)
    bob = Speaker(client, server, "restart")
    await bob.enter()
    await bob.say("before the restart")
    await alice.sees("bob", "before the restart")

    await server.stop()  # every connection ends
    await alice.page.locator("#status[data-state=reconnecting]").wait_for(timeout=5_000)
    await asyncio.sleep(0.5)  # a failed attempt or two: the page backs off
    await start_again(server, tmp_path / "chat.db")
    # the new process knows no one: bob's page polls again before he speaks
    await bob.poll()
    missed = [f"right after the restart {n}" for n in range(3)]
    for text in missed:
        await bob.say(text)

    for text in missed:
        await alice.sees("bob", text, wait_ms=15_000)
    await back_live(alice)
    await alice.say("alice is back")
    await alice.sees("alice", "alice is back")
    for text in ["before the restart", *missed]:
        assert await alice.count("bob", text) == 1, text
    assert await alice.count("alice", "alice is back") == 1
    assert not [p for p in alice.problems if "script error" in p], alice.problems
