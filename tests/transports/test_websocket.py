"""WebSocket over real loopback sockets: framing, errors, close codes, resume, limits."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.support import (
    UNLIMITED,
    RawWebSocket,
    Server,
    cookie_of,
    eventually,
    history,
    login,
    new_client,
    open_ws,
    press_leave,
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
    async with serving(tmp_path, **UNLIMITED) as server, new_client() as client:
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
    async with serving(tmp_path, **UNLIMITED) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        async with open_ws(client, server) as ws:
            for i in range(100):
                await ws.send_json({"text": f"last words {i}", "client_id": f"w{i}"})
        # closed at once, before most answers came: still, every message is kept, in order
        stored: list[dict[str, Any]] = []

        async def all_kept() -> bool:
            nonlocal stored
            stored = [e for e in await history(client, server) if e["type"] == "message"]
            return len(stored) >= 100

        await eventually(all_kept, within=5)
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


# --- the protocol after the upgrade (chatroom's own, not aiohttp's) ---------------------


async def _upgrade(
    client: aiohttp.ClientSession, server: Server, **headers: str
) -> aiohttp.ClientResponse:
    sent = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    sent = {k: v for k, v in sent.items() if v}
    async with client.get(
        f"{server.url}/websocket/room/socket?room=lobby", headers=sent
    ) as response:
        await response.read()
        return response


async def test_a_request_that_is_no_websocket_upgrade_is_refused(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with client.get(f"{server.url}/websocket/room/socket?room=lobby") as plain:
        assert plain.status == 400
        assert (await plain.json())["error"] == "not_websocket"
    no_key = await _upgrade(client, server, Sec_WebSocket_Key="")
    assert no_key.status == 400
    bad_key = await _upgrade(client, server, Sec_WebSocket_Key="c2hvcnQ=")
    assert bad_key.status == 400
    old = await _upgrade(client, server, Sec_WebSocket_Version="8")
    assert old.status == 426
    assert old.headers["Sec-WebSocket-Version"] == "13"


@asynccontextmanager
async def raw_ws(
    client: aiohttp.ClientSession, server: Server, *, rcvbuf: int | None = None
) -> AsyncIterator[RawWebSocket]:
    """A raw WebSocket to the lobby with the client's session; closed on exit."""
    raw = await RawWebSocket.connect(
        server, "/websocket/room/socket?room=lobby", cookie_of(client, server), rcvbuf=rcvbuf
    )
    try:
        assert raw.status == 101, raw.head
        yield raw
    finally:
        await raw.close()


async def frame_where(
    raw: RawWebSocket, wanted: Callable[[int, bytes], bool], within: float = 5.0
) -> tuple[int, bytes]:
    """Read frames until one is wanted(opcode, payload); return it."""
    async with asyncio.timeout(within):
        while True:
            opcode, payload = await raw.read_frame()
            if wanted(opcode, payload):
                return opcode, payload


async def test_the_upgrade_is_answered_by_the_rfc_6455_accept_key(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with raw_ws(client, server) as raw:
        head = raw.head.lower()
        assert "upgrade: websocket" in head
        assert "connection: upgrade" in head
        # the key itself is checked by aiohttp's client (every open_ws) and Chromium
        assert "sec-websocket-accept:" in head


async def test_a_ping_is_answered_with_a_pong_carrying_its_payload(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with raw_ws(client, server) as raw:
        raw.send_frame(0x9, b"are you there")
        _, payload = await frame_where(raw, lambda opcode, _: opcode == 0xA)
        assert payload == b"are you there"


async def test_a_close_from_the_client_is_answered_and_the_server_hangs_up(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with raw_ws(client, server) as raw:
        raw.send_frame(0x8, (4321).to_bytes(2, "big") + b"bye")
        _, code, _ = await raw.read_until_close()
        assert code == 4321
        # then the server closes the TCP connection: nothing more comes
        async with asyncio.timeout(5):
            assert await raw.reader.read() == b""
        await eventually(lambda: not server.chat.sockets)


async def test_a_bad_close_code_from_the_client_closes_1002(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with raw_ws(client, server) as raw:
        raw.send_frame(0x8, (1005).to_bytes(2, "big"))
        _, code, reason = await raw.read_until_close()
        assert code == 1002
        assert "1005" in reason


async def test_a_message_sent_just_before_a_bad_frame_is_still_stored(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with raw_ws(client, server) as raw:
        # one write: the server reads the good message and the bad frame together
        raw.writer.write(
            RawWebSocket.frame(0x1, b'{"text": "said first", "client_id": "f1"}')
            + RawWebSocket.frame(0x2, b"\x00\x01")
        )
        _, code, reason = await raw.read_until_close()
        assert code == 1003
        assert "binary" in reason
    await eventually(
        lambda: _texts_stored(client, server, "said first"), within=5.0, step=0.05
    )


async def _texts_stored(client: aiohttp.ClientSession, server: Server, text: str) -> bool:
    return any(e.get("text") == text for e in await history(client, server))


async def test_a_fragmented_message_is_one_message(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with raw_ws(client, server) as raw:
        whole = b'{"text": "in three parts", "client_id": "frag"}'
        raw.send_frame(0x1, whole[:10], fin=False)
        raw.send_frame(0x9, b"between")  # a control frame may come between fragments
        raw.send_frame(0x0, whole[10:20], fin=False)
        raw.send_frame(0x0, whole[20:])
        _, payload = await frame_where(raw, lambda op, data: op == 0x1 and b'"ack"' in data)
        assert b'"client_id":"frag"' in payload
    assert await _texts_stored(client, server, "in three parts")


async def test_a_client_that_stops_answering_pings_is_dropped(tmp_path: Path) -> None:
    async with serving(tmp_path, ws_heartbeat=0.2) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        path, cookie = "/websocket/room/socket?room=lobby", cookie_of(client, server)
        alive = await RawWebSocket.connect(server, path, cookie)
        silent = await RawWebSocket.connect(server, path, cookie)

        async def answer_pings() -> int:
            pongs = 0
            while True:
                opcode, payload = await alive.read_frame()
                if opcode == 0x9:
                    alive.send_frame(0xA, payload)
                    pongs += 1
                    if pongs == 10:
                        return pongs

        try:
            answering = asyncio.create_task(answer_pings())
            pings = 0
            async with asyncio.timeout(5):
                # the silent one reads the pings but never answers: dropped after one
                # heartbeat with nothing heard from it
                while True:
                    try:
                        opcode, _ = await silent.read_frame()
                    except asyncio.IncompleteReadError:
                        break
                    pings += opcode == 0x9
                assert pings >= 1
                # the one that answers stays through ten heartbeats, and can still talk
                assert await answering == 10
            alive.send_frame(0x1, b'{"text": "still here", "client_id": "h"}')
            await frame_where(alive, lambda op, data: op == 0x1 and b'"client_id":"h"' in data)
        finally:
            await alive.close()
            await silent.close()


def _server_tasks() -> Counter[str]:
    """The running tasks whose code is the server's (aiohttp's web side or chatroom's)."""
    names: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is None:
            continue
        path = code.co_filename
        if "/chatroom/" in path or "aiohttp/web_" in path:
            names[code.co_qualname] += 1
    return names


def _more_tasks(before: Counter[str]) -> Counter[str]:
    return _server_tasks() - before


async def test_an_idle_socket_holds_no_task(server: Server, client: aiohttp.ClientSession) -> None:
    await login(client, server, "alice", demo="websocket")
    await publish(server, "lobby", ["before"])
    before = _server_tasks()
    sockets = [await open_ws(client, server).__aenter__() for _ in range(20)]
    try:
        for ws in sockets:
            await ws_until(ws, has_text("before"))
        # each has had its history; the pumps have ended, nothing waits per socket
        await eventually(lambda: not _more_tasks(before), within=5.0)
        await publish(server, "lobby", ["live"])
        for ws in sockets:
            await ws_until(ws, has_text("live"))
        assert not _more_tasks(before)
        assert len(server.chat.sockets) == 20
    finally:
        for ws in sockets:
            await ws.close()
    await eventually(lambda: not server.chat.sockets)


async def test_sockets_that_go_at_once_leave_nothing_behind(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    path, cookie = "/websocket/room/socket?room=lobby", cookie_of(client, server)
    for i in range(20):
        raw = await RawWebSocket.connect(server, path, cookie)
        assert raw.status == 101
        if i % 2:
            # gone while it is being let in (presence, subscription) or just after
            raw.transport.abort()
        else:
            raw.send_frame(0x1, b'"a last word"')
            await raw.close()
    await eventually(lambda: not server.chat.sockets)
    assert server.chat.connections["websocket"] == 0
    assert server.broker.subscribers("lobby") == 0
    # what each said before it hung up was stored
    said = [e for e in await history(client, server) if e.get("text") == "a last word"]
    assert len(said) == 10


async def test_a_refused_socket_reads_the_answer_to_its_close_and_goes_at_once(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="longpolling")
    await press_leave(client, server, page.csrf, "longpolling")
    async with raw_ws(client, server) as raw:
        _, code, reason = await raw.read_until_close()
        assert code == 4000
        assert "left" in reason
        # the client answers the close: the server reads it and hangs up cleanly
        # (not after its 10 s close timeout, not with a reset)
        raw.send_frame(0x8, (1000).to_bytes(2, "big"))
        async with asyncio.timeout(2):
            assert await raw.reader.read() == b""
        await eventually(lambda: not server.chat.sockets, within=2.0)


async def test_a_client_that_sends_but_never_reads_is_cut_off(tmp_path: Path) -> None:
    # what the server owes it (pongs here) may pile up to max_unsent, not past it
    limit = 64 * 1024
    async with serving(tmp_path, max_unsent=limit) as server, new_client() as client:
        await login(client, server, "alice", demo="websocket")
        async with raw_ws(client, server, rcvbuf=4096) as raw:
            ping = RawWebSocket.frame(0x9, b"p" * 100)
            (sock,) = server.chat.sockets
            transport = sock.transport  # type: ignore[attr-defined]
            # a small kernel buffer on the server's side too, so what is owed shows in
            # the process (loopback would otherwise take megabytes)
            transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 8192
            )
            peak = 0
            for _ in range(200):
                raw.writer.write(ping * 100)
                await raw.writer.drain()
                await asyncio.sleep(0)
                peak = max(peak, transport.get_write_buffer_size())
            # 2 MB of pongs owed; never more than the limit and one frame held for it
            assert peak <= limit + 200
            # when it does read, it finds pongs, then why it was cut off
            _, code, reason = await raw.read_until_close(within=10)
            assert code == 4008
            assert "read what you are sent" in reason


async def test_a_frame_sent_right_behind_the_upgrade_request_is_not_lost(
    server: Server, client: aiohttp.ClientSession
) -> None:
    """RFC 6455 has clients wait for the 101; one that does not still loses nothing:
    the bytes aiohttp read behind the request are the socket's first."""
    await login(client, server, "alice", demo="websocket")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        request = (
            "GET /websocket/room/socket?room=lobby HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Cookie: chatroom_session={cookie_of(client, server)}\r\n\r\n"
        ).encode()
        # one write: the request and a message together
        writer.write(request + RawWebSocket.frame(0x1, b'{"text": "eager", "client_id": "e1"}'))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        raw = RawWebSocket(reader, writer, 101, head.decode())
        _, payload = await frame_where(raw, lambda op, data: b'"client_id":"e1"' in data)
        assert b'"ack"' in payload
    finally:
        writer.close()
    assert await _texts_stored(client, server, "eager")
