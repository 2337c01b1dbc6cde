"""Guarantee 3 over real sockets: a stalled client delays no one and is cut off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from chatroom.web.security import COOKIE
from tests.support import (
    RawWebSocket,
    cookie_of,
    eventually,
    history,
    login,
    new_client,
    open_ws,
    present,
    serving,
    ws_until,
)

ROOM = "flood"
TOTAL = 2000
CHUNK = 20
# big events fill the stalled socket's buffers quickly
TEXT = "x" * 1500
# bytes a client may have unsent in the server before it is cut off
MAX_UNSENT = 64 * 1024


async def collect(ws: aiohttp.ClientWebSocketResponse, into: list[dict[str, Any]]) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            into.append(orjson.loads(msg.data))
        else:
            break


@pytest.mark.slow
async def test_a_stalled_socket_is_cut_off_and_delays_no_one(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, max_pending=50, max_unsent=MAX_UNSENT) as server,
        new_client() as good,
        new_client() as slow,
    ):
        await login(good, server, "good", room=ROOM, demo="websocket")
        await login(slow, server, "stalled", room=ROOM, demo="websocket")
        await present(server.broker, ROOM, "bot", "bot-sid")  # the bot that floods it
        joins = await history(good, server, ROOM)
        # a small receive window, and a client that never reads
        raw = await RawWebSocket.connect(
            server, f"/websocket/room/socket?room={ROOM}", cookie_of(slow, server), rcvbuf=4096
        )
        try:
            assert raw.status == 101, raw.head
            raw.transport.pause_reading()
            async with open_ws(good, server, room=ROOM) as ws:
                frames = await ws_until(ws, lambda fs: len(fs) >= len(joins))
                reader = asyncio.create_task(collect(ws, frames))
                published: list[str] = []
                for start in range(0, TOTAL, CHUNK):
                    stored = await asyncio.gather(
                        *(
                            server.broker.say(ROOM, "bot", "bot-sid", f"{i} {TEXT}")
                            for i in range(start, start + CHUNK)
                        )
                    )
                    published.extend(s.event.id for s in stored)
                    # the good client keeps up, whatever the stalled one does
                    await eventually(
                        lambda: len(frames) >= len(joins) + len(published), step=0.001
                    )
                assert server.broker.stats.cut_off == 1
                # the stalled subscription is gone: nothing more is kept for it
                assert server.broker.subscribers(ROOM) == 1
                async with good.get(f"{server.url}/metrics") as response:
                    assert "chatroom_clients_cut_off_total 1.0" in await response.text()
                reader.cancel()

            all_ids = [e["id"] for e in joins] + published
            assert [f["id"] for f in frames] == all_ids
            assert [int(f["text"].split()[0]) for f in frames[len(joins):]] == list(range(TOTAL))

            # the stalled client reads at last: a prefix in order, then the reason
            raw.transport.resume_reading()
            texts, code, reason = await raw.read_until_close(within=10)
            assert code == 4008
            assert "too slow" in reason
            got = [orjson.loads(t)["id"] for t in texts]
            assert got == all_ids[: len(got)]
            assert len(got) < len(all_ids)
        finally:
            await raw.close()

        # and it resumes from its cursor: the rest, no reset, no duplicate
        async with open_ws(slow, server, room=ROOM, last=got[-1]) as ws:
            rest = await ws_until(ws, lambda fs: fs and fs[-1].get("id") == all_ids[-1])
        assert [f["id"] for f in rest] == all_ids[len(got):]


async def raw_sse(port: int, cookie: str) -> asyncio.StreamWriter:
    """A GET of the event stream over a socket with a small receive window; it never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /sse/room/events?room={ROOM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Cookie: {COOKIE}={cookie}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()
    return writer


@pytest.mark.slow
async def test_a_stalled_event_stream_is_cut_off_and_delays_no_one(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, max_pending=50, max_unsent=MAX_UNSENT) as server,
        new_client() as good,
        new_client() as slow,
    ):
        await login(good, server, "good", room=ROOM, demo="websocket")
        await login(slow, server, "stalled", room=ROOM, demo="sse")
        await present(server.broker, ROOM, "bot", "bot-sid")  # the bot that floods it
        joins = await history(good, server, ROOM)
        writer = await raw_sse(server.port, cookie_of(slow, server))
        try:
            async with open_ws(good, server, room=ROOM) as ws:
                frames = await ws_until(ws, lambda fs: len(fs) >= len(joins))
                task = asyncio.create_task(collect(ws, frames))
                count = 0
                for start in range(0, TOTAL, CHUNK):
                    await asyncio.gather(
                        *(
                            server.broker.say(ROOM, "bot", "bot-sid", f"{i} {TEXT}")
                            for i in range(start, start + CHUNK)
                        )
                    )
                    count += CHUNK
                    want = len(joins) + count
                    await eventually(lambda: len(frames) >= want, step=0.001)  # noqa: B023
                assert server.broker.stats.cut_off == 1
                # only the good subscriber is left: nothing more is kept for the stalled one
                assert server.broker.subscribers(ROOM) == 1
                task.cancel()
            assert [int(f["text"].split()[0]) for f in frames[len(joins):]] == list(range(TOTAL))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.mark.parametrize("technique", ["websocket", "sse"])
async def test_a_stalled_client_that_goes_away_is_no_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, technique: str
) -> None:
    # no cut-off here: the server is blocked writing to the client when it vanishes (the
    # bounds are set past what is sent, so that how fast the kernel grows its buffers on
    # a busy machine decides nothing)
    async with serving(
        tmp_path, socket_send_buffer=0, max_unsent=1 << 30, max_pending=1 << 20
    ) as server, new_client() as slow:
        await login(slow, server, "stalled", room=ROOM, demo=technique)
        await present(server.broker, ROOM, "bot", "bot-sid")  # the bot that floods it
        if technique == "websocket":
            raw = await RawWebSocket.connect(
                server, f"/websocket/room/socket?room={ROOM}", cookie_of(slow, server),
                rcvbuf=4096,
            )
            raw.transport.pause_reading()
            writer = raw.writer
        else:
            writer = await raw_sse(server.port, cookie_of(slow, server))
        for start in range(0, TOTAL, CHUNK):
            await asyncio.gather(
                *(
                    server.broker.say(ROOM, "bot", "bot-sid", f"{i} {TEXT}")
                    for i in range(start, start + CHUNK)
                )
            )
        # the socket is stuck: the server waits to write
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.abort()
        # the next event finds it gone (an idle stream finds out at its next heartbeat)
        await asyncio.sleep(0.1)
        await server.broker.say(ROOM, "bot", "bot-sid", "after")
        await eventually(lambda: not server.chat.connections[technique], within=3)
        assert server.broker.subscribers(ROOM) == 0
        assert server.broker.stats.cut_off == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
