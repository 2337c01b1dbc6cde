"""Server-Sent Events over real loopback sockets: framing, ids, resume, heartbeat, reset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from chatroom.web.security import COOKIE
from tests.support import (
    Server,
    SSEEvent,
    SSEStream,
    cookie_of,
    history,
    login,
    new_client,
    press_leave,
    publish,
    serving,
)


@asynccontextmanager
async def sse(
    client: aiohttp.ClientSession,
    server: Server,
    room: str = "lobby",
    last: str | None = None,
    last_event_id: str | None = None,
) -> AsyncIterator[SSEStream]:
    params = {"room": room}
    if last is not None:
        params["lastReceived"] = last
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with client.get(
        f"{server.url}/sse/room/events", params=params, headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        yield SSEStream(response)


async def take(stream: SSEStream, n: int) -> list[SSEEvent]:
    out = []
    for _ in range(n):
        event = await stream.next()
        assert event is not None, "the stream ended early"
        out.append(event)
    return out


async def test_event_stream_ids_equal_event_ids(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await publish(server, "lobby", ["one", "two"])
    await login(client, server, "alice", demo="sse")
    stored = await history(client, server)
    async with sse(client, server) as stream:
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert stream.response.headers["Cache-Control"] == "no-store"
        archive = await take(stream, len(stored))
        # the browser's reconnect delay came first, jittered
        assert stream.retry is not None
        assert 1000 <= stream.retry <= 4000
        await publish(server, "lobby", ["live"])
        (live,) = await take(stream, 1)
    for event in [*archive, live]:
        assert event.id == event.json()["id"]
        assert event.event is None
    assert [e.id for e in archive] == [e["id"] for e in stored]
    assert live.json()["text"] == "live"


async def test_resume_from_last_event_id_header(
    server: Server, client: aiohttp.ClientSession
) -> None:
    ids = await publish(server, "lobby", [f"m{i}" for i in range(6)])
    await login(client, server, "alice", demo="sse")
    stored = await history(client, server)
    async with sse(client, server, last_event_id=ids[2]) as stream:
        got = await take(stream, len(stored) - 3)
    assert [e.id for e in got] == [e["id"] for e in stored[3:]]
    assert all(e.json().get("type") != "reset" for e in got)


async def test_resume_from_last_received(server: Server, client: aiohttp.ClientSession) -> None:
    ids = await publish(server, "lobby", [f"m{i}" for i in range(6)])
    await login(client, server, "alice", demo="sse")
    stored = await history(client, server)
    async with sse(client, server, last=ids[4]) as stream:
        got = await take(stream, len(stored) - 5)
        await publish(server, "lobby", ["next"])
        (nxt,) = await take(stream, 1)
    assert [e.id for e in got] == [e["id"] for e in stored[5:]]
    assert nxt.json()["text"] == "next"


async def test_header_wins_over_query(server: Server, client: aiohttp.ClientSession) -> None:
    # the browser sends Last-Event-ID on its own reconnects: it is the newer cursor
    ids = await publish(server, "lobby", [f"m{i}" for i in range(4)])
    await login(client, server, "alice", demo="sse")
    async with sse(client, server, last=ids[0], last_event_id=ids[2]) as stream:
        (first,) = await take(stream, 1)
    assert first.id == ids[3]


@pytest.mark.parametrize("cursor", ["nonsense", "00000000-1", "abc-99"])
async def test_reset_marker_has_no_id_line(
    server: Server, client: aiohttp.ClientSession, cursor: str
) -> None:
    await publish(server, "lobby", ["a", "b"])
    await login(client, server, "alice", demo="sse")
    stored = await history(client, server)
    async with sse(client, server, last_event_id=cursor) as stream:
        reset, *replayed = await take(stream, 1 + len(stored))
    assert reset.id is None
    assert reset.json() == {"type": "reset", "id": stored[0]["id"]}
    assert [e.id for e in replayed] == [e["id"] for e in stored]


async def test_heartbeat_comment(tmp_path: Path) -> None:
    async with serving(tmp_path, sse_heartbeat=0.2) as server, new_client() as client:
        await login(client, server, "alice", demo="sse")
        async with sse(client, server) as stream:
            (join,) = await take(stream, 1)
            assert join.json()["type"] == "join"
            # nothing happens for a while: comments keep the stream alive
            with pytest.raises(TimeoutError):
                await stream.next(within=0.7)
            assert stream.comments.count("heartbeat") >= 2
            # and the stream still delivers
            await publish(server, "lobby", ["after the quiet"])
            (event,) = await take(stream, 1)
            assert event.json()["text"] == "after the quiet"


async def test_no_session_401(server: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{server.url}/sse/room/events") as response:
        assert response.status == 401
        body = await response.json()
    assert body["error"] == "no_session"


async def test_bad_room_400(server: Server, client: aiohttp.ClientSession) -> None:
    await login(client, server, "alice", demo="sse")
    async with client.get(
        f"{server.url}/sse/room/events", params={"room": "Not A Room!"}
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert "room names" in body["reason"]


async def test_stream_counts_as_a_connection_and_ends_on_leave(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="sse")
    async with sse(client, server) as stream:
        await take(stream, 1)
        async with client.get(f"{server.url}/metrics") as response:
            assert 'chatroom_connections{technique="sse"} 1.0' in await response.text()
        await press_leave(client, server, page.csrf, "sse")
        # the leave event, then `event: left` (so the page does not reconnect), the end
        (leave,) = await take(stream, 1)
        assert leave.json()["type"] == "leave"
        left = await stream.next()
        assert left is not None
        assert left.event == "left"
        assert left.id is None
        assert left.json()["type"] == "left"
        assert await stream.next() is None


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_live_events_on_the_wire_in_each_http_version_framing(
    server: Server, client: aiohttp.ClientSession, version: str
) -> None:
    """Live events are written by the fan-out itself: as HTTP/1.1 chunks, or as they
    are on an HTTP/1.0 stream (no chunking there), byte for byte."""
    await login(client, server, "alice", demo="sse")
    cookie = cookie_of(client, server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            f"GET /sse/room/events?room=lobby HTTP/{version}\r\nHost: 127.0.0.1\r\n"
            f"Cookie: {COOKIE}={cookie}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(f"HTTP/{version} 200".encode()), head
        assert (b"chunked" in head.lower()) == (version == "1.1")
        # the archive (alice's join) has come when the stream is caught up
        got = bytearray()
        async with asyncio.timeout(5):
            while b'"type":"join"' not in got:
                got += await reader.read(65536)
        (event_id,) = await publish(server, "lobby", ["on the wire"])
        frame = f"id: {event_id}\ndata: ".encode()
        async with asyncio.timeout(5):
            while frame not in got or not got.endswith(b"\n\n" if version == "1.0" else b"\r\n"):
                got += await reader.read(65536)
        start = got.index(frame)
        end = got.index(b"\n\n", start) + 2
        sse_frame = bytes(got[start:end])
        assert b'"text":"on the wire"' in sse_frame
        if version == "1.1":
            # one chunk: its size line, the frame, CRLF
            size_line = f"{len(sse_frame):x}\r\n".encode()
            assert got[start - len(size_line) : start] == size_line
            assert got[end : end + 2] == b"\r\n"
    finally:
        writer.close()
