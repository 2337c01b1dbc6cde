"""WebSocket over real loopback sockets: framing, errors, close codes, resume, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.support import (
    RawWebSocket,
    Server,
    cookie_of,
    history,
    login,
    new_client,
    open_ws,
    publish,
    say_lp,
    serving,
    ws_until,
)


def messages(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("type") == "message"]


def has_text(text: str) -> Any:
    return lambda frames: any(f.get("text") == text for f in frames)


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """Read until the server closes: the close code and reason it sent."""
    async with asyncio.timeout(5.0):
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.CLOSE:
                return ws.close_code, str(msg.extra or "")
            if msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                return ws.close_code, ""


async def test_history_first_then_live(server: Server, client: aiohttp.ClientSession) -> None:
    await publish(server, "lobby", ["one", "two", "three"])
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        first = await ws_until(ws, lambda fs: len(fs) >= 4)
        assert [m["text"] for m in messages(first)] == ["one", "two", "three"]
        # the archive ends with alice's join (from /demo)
        assert first[-1]["type"] == "join"
        assert first[-1]["user"] == "alice"
        await publish(server, "lobby", ["live"])
        live = await ws_until(ws, has_text("live"))
        assert messages(live)[-1]["user"] == "bot"
        ids = [f["id"] for f in first + live]
        assert len(ids) == len(set(ids))
        stored = [e["id"] for e in await history(client, server)]
        assert ids == stored


async def test_json_object_and_bare_string_frames_with_ack(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws.send_json({"text": "as object", "client_id": "c-1"})
        frames = await ws_until(
            ws, lambda fs: any(f.get("type") == "ack" for f in fs) and has_text("as object")(fs)
        )
        ack = next(f for f in frames if f["type"] == "ack")
        event = next(f for f in frames if f.get("text") == "as object")
        assert ack == {"type": "ack", "client_id": "c-1", "id": event["id"]}
        assert event["user"] == "alice"
        assert event["room"] == "lobby"
        assert isinstance(event["timestamp"], int)

        await ws.send_json("bare string")
        frames = await ws_until(ws, has_text("bare string"))
        # no client_id, no ack
        assert not any(f.get("type") == "ack" for f in frames)
    texts = [e.get("text") for e in await history(client, server) if e["type"] == "message"]
    assert texts == ["as object", "bare string"]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ("42", "bad_frame"),
        ('{"text": 5}', "invalid"),
        ('{"text": ["a"]}', "invalid"),
        ('""', "invalid"),
        ('"   "', "invalid"),
        ('{"client_id": "x"}', "invalid"),
        ('"' + "a" * 2001 + '"', "invalid"),
        ('{"text": "ok", "client_id": 7}', "invalid"),
    ],
)
async def test_bad_frames_get_an_error_frame_and_the_connection_stays(
    server: Server, client: aiohttp.ClientSession, raw: str, error: str
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws_until(ws, lambda fs: any(f["type"] == "join" for f in fs))
        await ws.send_str(raw)
        frames = await ws_until(ws, lambda fs: any(f.get("type") == "error" for f in fs))
        reply = frames[-1]
        assert reply["error"] == error
        assert isinstance(reply["reason"], str)
        assert len(reply["reason"]) > 5
        # still open, still works
        await ws.send_json({"text": "after the error", "client_id": "after"})
        await ws_until(ws, lambda fs: any(f.get("type") == "ack" for f in fs))
        assert not ws.closed
    texts = [e.get("text") for e in await history(client, server) if e["type"] == "message"]
    assert texts == ["after the error"]


async def test_too_long_text_reason_names_the_limit(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws.send_json({"text": "x" * 2001, "client_id": "long"})
        frames = await ws_until(ws, lambda fs: any(f.get("type") == "error" for f in fs))
        reply = frames[-1]
        assert reply["error"] == "invalid"
        assert "2000" in reply["reason"]
        assert reply["client_id"] == "long"
        # exactly 2000 is fine
        await ws.send_json({"text": "y" * 2000, "client_id": "max"})
        await ws_until(ws, lambda fs: any(f.get("type") == "ack" for f in fs))


async def test_binary_frame_closes_1003(server: Server, client: aiohttp.ClientSession) -> None:
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws.send_bytes(b"\x00\x01binary")
        code, reason = await closed_with(ws)
        assert code == 1003
        assert "binary" in reason
    assert not [e for e in await history(client, server) if e["type"] == "message"]


async def test_invalid_utf8_text_frame_closes_1007(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws.send_frame(b"\xff\xfe", WSMsgType.TEXT)
        code, reason = await closed_with(ws)
        assert code == 1007
        assert "UTF-8" in reason


async def test_invalid_utf8_over_a_raw_socket_closes_1007(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    raw = await RawWebSocket.connect(
        server, "/websocket/room/socket?room=lobby", cookie_of(client, server)
    )
    try:
        assert raw.status == 101, raw.head
        raw.send_frame(0x1, b"ok \xff\xfe")
        _, code, reason = await raw.read_until_close()
        assert code == 1007
        assert "UTF-8" in reason
    finally:
        await raw.close()


async def test_oversized_message_closes_1009(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws.send_str('"' + "z" * (17 * 1024) + '"')
        code, reason = await closed_with(ws)
        assert code == 1009
        assert "16384" in reason
    # the room carries on: another say works
    session = await login(client, server, "alice", demo="websocket")
    await say_lp(client, server, session.csrf, "still here")


async def test_resume_after_a_dropped_connection_has_no_gap_and_no_duplicate(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with new_client() as other:
        bob = await login(other, server, "bob", demo="longpolling")
        async with open_ws(client, server) as ws:
            await say_lp(other, server, bob.csrf, "before 1")
            await say_lp(other, server, bob.csrf, "before 2")
            seen = await ws_until(ws, has_text("before 2"))
        # dropped: others keep talking
        for i in range(5):
            await say_lp(other, server, bob.csrf, f"while away {i}")
        last = seen[-1]["id"]
        async with open_ws(client, server, last=last) as ws:
            await say_lp(other, server, bob.csrf, "after")
            resumed = await ws_until(ws, has_text("after"))
    assert all(f.get("type") != "reset" for f in resumed)
    got = [f["id"] for f in seen + resumed]
    stored = [e["id"] for e in await history(client, server)]
    assert got == stored
    assert [f.get("text") for f in resumed] == [f"while away {i}" for i in range(5)] + ["after"]


@pytest.mark.parametrize("cursor", ["garbage!", "deadbeef-3", "zz", "-1", "abc-99999999"])
async def test_unknown_cursor_gets_reset_first(
    server: Server, client: aiohttp.ClientSession, cursor: str
) -> None:
    await publish(server, "lobby", ["a", "b"])
    await login(client, server, "alice", demo="websocket")
    stored = await history(client, server)
    async with open_ws(client, server, last=cursor) as ws:
        frames = await ws_until(ws, lambda fs: len(fs) >= 1 + len(stored))
    assert frames[0] == {"type": "reset", "id": stored[0]["id"]}
    assert [f["id"] for f in frames[1:]] == [e["id"] for e in stored]


async def test_cross_site_origin_refused_403(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with open_ws(client, server, origin="http://evil.example"):
            pass
    assert info.value.status == 403
    # the page's own origin is fine
    async with open_ws(client, server, origin=server.url) as ws:
        await ws_until(ws, lambda fs: len(fs) >= 1)


async def test_no_session_cookie_401(server: Server, client: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with open_ws(client, server):
            pass
    assert info.value.status == 401
    raw = await RawWebSocket.connect(server, "/websocket/room/socket?room=lobby", None)
    try:
        assert raw.status == 401
        assert "no_session" in (await raw.reader.read(4096)).decode()
    finally:
        await raw.close()


async def test_invalid_room_name_refused_400(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with open_ws(client, server, room="no spaces!"):
            pass
    assert info.value.status == 400


async def test_flood_gets_rate_limited_frames_and_stores_only_the_allowed(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    sent = 25
    async with open_ws(client, server) as ws:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(sent):
            await ws.send_json({"text": f"flood {i}", "client_id": f"f{i}"})
        frames = await ws_until(
            ws,
            lambda fs: sum(f.get("type") in ("ack", "error") for f in fs) >= sent,
        )
        elapsed = loop.time() - start
        acks = [f for f in frames if f.get("type") == "ack"]
        limited = [f for f in frames if f.get("type") == "error"]
        assert all(f["error"] == "rate_limited" for f in limited)
        assert all(f["retry_after"] > 0 for f in limited)
        # burst 10, 5 a second refill
        assert 10 <= len(acks) <= 10 + int(elapsed * 5) + 1
        assert len(limited) == sent - len(acks)
        # the connection is still open and, after a pause, speaks again
        await asyncio.sleep(0.3)
        await ws.send_json({"text": "calm", "client_id": "calm"})
        await ws_until(ws, lambda fs: any(f.get("client_id") == "calm" for f in fs))
    stored = [e for e in await history(client, server) if e["type"] == "message"]
    assert [e["id"] for e in stored[:-1]] == [a["id"] for a in acks]
    assert stored[-1]["text"] == "calm"


async def test_retry_with_same_client_id_stores_once(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with open_ws(client, server) as ws:
        await ws.send_json({"text": "once", "client_id": "same"})
        first = await ws_until(ws, lambda fs: any(f.get("type") == "ack" for f in fs))
    # the answer was "lost": reconnect and retry
    async with open_ws(client, server, last=first[-1]["id"]) as ws:
        await ws.send_json({"text": "once", "client_id": "same"})
        second = await ws_until(ws, lambda fs: any(f.get("type") == "ack" for f in fs))
    ack1 = next(f for f in first if f["type"] == "ack")
    ack2 = next(f for f in second if f["type"] == "ack")
    assert ack1["id"] == ack2["id"]
    # nothing new was delivered on the second connection
    assert [f for f in second if f.get("type") == "message"] == []
    stored = [e for e in await history(client, server) if e["type"] == "message"]
    assert [e["text"] for e in stored] == ["once"]


async def test_same_client_id_from_another_session_is_a_new_message(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with new_client() as other:
        await login(other, server, "bob", demo="websocket")
        async with open_ws(client, server) as a, open_ws(other, server) as b:
            await a.send_json({"text": "from alice", "client_id": "shared"})
            await ws_until(a, lambda fs: any(f.get("type") == "ack" for f in fs))
            await b.send_json({"text": "from bob", "client_id": "shared"})
            await ws_until(b, lambda fs: any(f.get("type") == "ack" for f in fs))
    stored = [e for e in await history(client, server) if e["type"] == "message"]
    assert [(e["user"], e["text"]) for e in stored] == [
        ("alice", "from alice"),
        ("bob", "from bob"),
    ]


async def test_room_names_are_lower_cased(tmp_path: Path) -> None:
    async with serving(tmp_path) as server, new_client() as client:
        await login(client, server, "alice", room="MixedCase", demo="websocket")
        async with open_ws(client, server, room="MIXEDcase") as ws:
            await ws.send_json({"text": "hi", "client_id": "1"})
            frames = await ws_until(ws, has_text("hi"))
        assert messages(frames)[-1]["room"] == "mixedcase"


async def test_cursor_beyond_the_head_gets_reset(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await publish(server, "lobby", ["a", "b"])
    await login(client, server, "alice", demo="websocket")
    stored = await history(client, server)
    epoch = stored[-1]["id"].rsplit("-", 1)[0]
    async with open_ws(client, server, last=f"{epoch}-{len(stored) + 5}") as ws:
        frames = await ws_until(ws, lambda fs: len(fs) >= 1 + len(stored))
    assert frames[0] == {"type": "reset", "id": stored[0]["id"]}
    assert [f["id"] for f in frames[1:]] == [e["id"] for e in stored]


async def test_cursor_older_than_retention_gets_reset_and_what_is_retained(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, retention=5) as server, new_client() as client:
        ids = await publish(server, "lobby", [f"m{i}" for i in range(10)])
        await login(client, server, "alice", demo="websocket")
        stored = await history(client, server)
        assert len(stored) == 5
        async with open_ws(client, server, last=ids[1]) as ws:
            frames = await ws_until(ws, lambda fs: len(fs) >= 6)
        assert frames[0] == {"type": "reset", "id": stored[0]["id"]}
        assert [f["id"] for f in frames[1:]] == [e["id"] for e in stored]
        # the oldest retained id is a cursor honoured without a reset
        async with open_ws(client, server, last=stored[0]["id"]) as ws:
            frames = await ws_until(ws, lambda fs: len(fs) >= 4)
        assert [f["id"] for f in frames] == [e["id"] for e in stored[1:]]


async def test_an_allowed_origin_may_connect(tmp_path: Path) -> None:
    other = "https://chat.example.org"
    async with serving(tmp_path, allowed_origins=(other,)) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        async with open_ws(client, server, origin=other) as ws:
            await ws_until(ws, lambda fs: len(fs) >= 1)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            async with open_ws(client, server, origin="https://chat.example.org.evil.test"):
                pass
        assert info.value.status == 403


async def test_a_burst_is_stored_in_order_and_every_frame_answered_in_order(
    tmp_path: Path,
) -> None:
    """Frames sent back to back are stored in runs (while one commits, the next
    gathers); order and the one-answer-per-frame rule hold whatever the runs."""
    async with serving(tmp_path, rate=1e6, burst=1e6) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        sent: list[str] = []
        async with open_ws(client, server) as ws:
            for i in range(300):
                if i % 50 == 25:
                    sent.append("{not json")
                else:
                    sent.append(f'{{"text": "b{i}", "client_id": "c{i}"}}')
                await ws.send_str(sent[-1])
            frames = await ws_until(
                ws, lambda fs: sum(f.get("type") in ("ack", "error") for f in fs) >= 300
            )
        answers = [f for f in frames if f.get("type") in ("ack", "error")]
        assert [a.get("client_id") for a in answers] == [
            None if s == "{not json" else f"c{i}" for i, s in enumerate(sent)
        ]
        assert [a["error"] for a in answers if a["type"] == "error"] == ["bad_json"] * 6
        acks = [a for a in answers if a["type"] == "ack"]
        stored = [e for e in await history(client, server) if e["type"] == "message"]
        assert [e["id"] for e in stored] == [a["id"] for a in acks]
        assert [e["text"] for e in stored] == [
            f"b{i}" for i in range(300) if i % 50 != 25
        ]


async def test_what_a_socket_said_before_it_closed_is_stored(tmp_path: Path) -> None:
    async with serving(tmp_path, rate=1e6, burst=1e6) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        async with open_ws(client, server) as ws:
            for i in range(100):
                await ws.send_json({"text": f"last words {i}", "client_id": f"w{i}"})
        # closed at once, before most answers came: still, every message is kept, in order
        async with asyncio.timeout(5):
            while True:
                stored = [e for e in await history(client, server) if e["type"] == "message"]
                if len(stored) >= 100:
                    break
                await asyncio.sleep(0.05)
        assert [e["text"] for e in stored] == [f"last words {i}" for i in range(100)]


async def test_a_failure_storing_messages_is_answered_and_the_socket_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(tmp_path) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        broker = server.broker
        real = broker.say_many

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        broker.say_many = broken  # type: ignore[method-assign]
        async with open_ws(client, server) as ws:
            await ws.send_json({"text": "lost?", "client_id": "x1"})
            frames = await ws_until(ws, lambda fs: any(f.get("type") == "error" for f in fs))
            error = next(f for f in frames if f.get("type") == "error")
            assert (error["error"], error["client_id"]) == ("internal", "x1")
            # the socket stays; once storing works again, so does saying
            broker.say_many = real  # type: ignore[method-assign]
            await ws.send_json({"text": "again", "client_id": "x2"})
            await ws_until(ws, lambda fs: any(f.get("client_id") == "x2" for f in fs))
        assert any("storing 1 messages failed" in r.getMessage() for r in caplog.records)
        texts = [e.get("text") for e in await history(client, server) if e["type"] == "message"]
        assert texts == ["again"]
