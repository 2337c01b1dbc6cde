"""`python -m chatroom serve` as a real process: SIGKILL loses nothing, SIGTERM is graceful."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatroom.core.events import parse_cursor
from tests.support import eventually, free_port, new_client

_CSRF = re.compile(r'data-csrf="([^"]+)"')


@dataclass
class Process:
    """A chatroom server process and where it listens."""

    proc: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def log(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


async def ready(probe: aiohttp.ClientSession, server: Process) -> bool:
    assert server.proc.returncode is None, await server.log()
    try:
        async with probe.get(f"{server.url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


@asynccontextmanager
async def chatroom(tmp_path: Path) -> AsyncIterator[Process]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatroom", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend", f"sqlite:///{tmp_path / 'chat.db'}",
        "--secret", "s" * 32, "--log-level", "WARNING",
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    server = Process(proc, port)
    try:
        async with aiohttp.ClientSession() as probe:
            await eventually(lambda: ready(probe, server), within=15, step=0.05)
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def login(client: aiohttp.ClientSession, server: Process, user: str, demo: str) -> str:
    """Claim a nickname; the page's CSRF token."""
    async with client.get(
        f"{server.url}/demo", params={"user": user, "demo": demo}
    ) as response:
        page = await response.text()
        assert response.status == 200, page
    found = _CSRF.search(page)
    assert found, page
    return found.group(1)


async def say(
    client: aiohttp.ClientSession, server: Process, csrf: str, text: str
) -> dict[str, Any]:
    async with client.post(
        f"{server.url}/longpolling/room/messages", json={"message": text, "csrf": csrf}
    ) as response:
        assert response.status == 200, await response.text()
        event: dict[str, Any] = await response.json()
    return event


async def poll(
    client: aiohttp.ClientSession, server: Process, last: str | None = None
) -> list[dict[str, Any]]:
    params = {"lastReceived": last} if last else {}
    async with client.get(
        f"{server.url}/longpolling/room/messages", params=params
    ) as response:
        assert response.status == 200, await response.text()
        events: list[dict[str, Any]] = await response.json()
    return events


async def wait_exit(proc: asyncio.subprocess.Process, within: float) -> int:
    async with asyncio.timeout(within):
        return await proc.wait()


@pytest.mark.slow
async def test_sigkill_loses_nothing_said_and_ids_keep_increasing(tmp_path: Path) -> None:
    said = []
    async with new_client() as client:
        async with chatroom(tmp_path) as server:
            csrf = await login(client, server, "alice", "longpolling")
            for i in range(5):
                said.append(await say(client, server, csrf, f"before {i}"))
            server.proc.send_signal(signal.SIGKILL)
            assert await wait_exit(server.proc, 5) == -signal.SIGKILL

        async with chatroom(tmp_path) as server:
            async with client.get(f"{server.url}/api/rooms/lobby/history") as response:
                stored = (await response.json())["events"]
            assert [e for e in stored if e["type"] == "message"] == said
            # the cookie is still good (same secret); the nickname is claimed afresh
            csrf = await login(client, server, "alice", "longpolling")
            after = await say(client, server, csrf, "after")
    old = [parse_cursor(e["id"]) for e in said]
    new = parse_cursor(after["id"])
    assert new is not None
    assert all(p is not None and p.epoch == new.epoch and p.offset < new.offset for p in old)
    assert after["id"] not in {e["id"] for e in stored}


@pytest.mark.slow
async def test_sigterm_closes_sockets_1001_and_answers_parked_polls(tmp_path: Path) -> None:
    async with (
        new_client() as client,
        new_client() as poller,
        new_client() as reader,
        chatroom(tmp_path) as server,
    ):
        await login(client, server, "alice", "websocket")
        await login(poller, server, "bob", "longpolling")
        await login(reader, server, "carol", "sse")
        head = (await poll(poller, server))[-1]["id"]
        async with (
            client.ws_connect(f"{server.ws_url}/websocket/room/socket") as ws,
            reader.get(f"{server.url}/sse/room/events", params={"lastReceived": head}) as sse,
        ):
            # the archive (three joins) first
            for _ in range(3):
                assert (await ws.receive()).type == aiohttp.WSMsgType.TEXT
            assert sse.status == 200
            parked = asyncio.create_task(poll(poller, server, last=head))
            await asyncio.sleep(0.3)
            assert not parked.done()

            loop = asyncio.get_running_loop()
            start = loop.time()
            server.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == 1001
                assert "shutting down" in str(msg.extra)
                assert await parked == []
                # the event stream ends cleanly (only the retry line was sent)
                assert b"data:" not in await sse.content.read()
            assert await wait_exit(server.proc, 5) == 0
            assert loop.time() - start < 5
        log = await server.log()
        assert "Traceback" not in log, log
