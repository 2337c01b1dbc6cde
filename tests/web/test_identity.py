"""Guarantee 6: the name a message shows is the one the server bound to the session."""

from __future__ import annotations

import base64

import aiohttp
import orjson
import pytest

from chatroom.web.security import COOKIE, Session, SessionSigner
from tests.support import (
    SECRET,
    Server,
    cookie_of,
    history,
    login,
    new_client,
    open_ws,
    press_leave,
    ws_until,
)


async def speakers(client: aiohttp.ClientSession, server: Server) -> list[tuple[str, str]]:
    return [(e["user"], e["text"]) for e in await history(client, server) if e["type"] == "message"]


async def test_a_user_field_cannot_change_the_name(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="websocket")
    url = f"{server.url}/longpolling/room/messages"
    async with client.post(
        url,
        params={"room": "lobby", "user": "mallory"},
        json={"message": "json", "csrf": page.csrf, "user": "mallory"},
    ) as response:
        assert response.status == 200
        assert (await response.json())["user"] == "alice"
    async with client.post(
        url,
        params={"room": "lobby", "user": "mallory"},
        data={"message": "form", "csrf": page.csrf, "user": "mallory"},
    ) as response:
        assert response.status == 200
    async with client.post(
        f"{server.url}/refresh/room",
        params={"room": "lobby", "user": "mallory"},
        data={"message": "refresh", "csrf": page.csrf, "user": "mallory"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
    async with client.ws_connect(
        f"{server.ws_url}/websocket/room/socket", params={"room": "lobby", "user": "mallory"}
    ) as ws:
        await ws.send_json({"text": "frame", "user": "mallory", "client_id": "c"})
        await ws_until(ws, lambda fs: any(f.get("type") == "ack" for f in fs))
    assert await speakers(client, server) == [
        ("alice", "json"),
        ("alice", "form"),
        ("alice", "refresh"),
        ("alice", "frame"),
    ]


def forged_cookies(genuine: str) -> list[str]:
    payload, stamp, mac = genuine.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["user"] = "mallory"
    other = base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    wrong_secret = SessionSigner(b"another secret " * 3).sign(Session(data["sid"], "mallory"))
    return [
        f"{other}.{stamp}.{mac}",  # the name changed, the old signature kept
        f"{payload}.{stamp}.{flipped}",  # the signature tampered
        wrong_secret,  # signed with another key
        payload,  # no signature at all
        "garbage",
        f"{payload}.{stamp}.{mac}\u00e9",  # a non-ASCII character
        f"{payload}.{stamp}.{mac}" + "A" * 5000,  # far too long
    ]


@pytest.mark.parametrize("which", range(7))
async def test_forged_or_tampered_cookie_rejected_401(
    server: Server, client: aiohttp.ClientSession, which: int
) -> None:
    await login(client, server, "alice", demo="websocket")
    forged = forged_cookies(cookie_of(client, server))[which]
    async with aiohttp.ClientSession(cookies={COOKIE: forged}) as mallory:
        async with mallory.get(f"{server.url}/longpolling/room/messages") as response:
            assert response.status == 401
        async with mallory.post(
            f"{server.url}/longpolling/room/messages", json={"message": "as someone"}
        ) as response:
            assert response.status == 401
        async with mallory.get(f"{server.url}/sse/room/events") as response:
            assert response.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            async with mallory.ws_connect(f"{server.ws_url}/websocket/room/socket"):
                pass
        assert info.value.status == 401
    assert await speakers(client, server) == []


async def test_the_genuine_cookie_works(server: Server, client: aiohttp.ClientSession) -> None:
    # the control for the forgeries above: the same requests with the real cookie succeed
    await login(client, server, "alice", demo="websocket")
    async with (
        aiohttp.ClientSession(cookies={COOKIE: cookie_of(client, server)}) as same,
        same.ws_connect(f"{server.ws_url}/websocket/room/socket") as ws,
    ):
        await ws.send_json({"text": "me", "client_id": "1"})
        await ws_until(ws, lambda fs: any(f.get("type") == "ack" for f in fs))
    assert await speakers(client, server) == [("alice", "me")]


async def test_nickname_held_by_another_live_session_is_refused_409(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "alice", demo="websocket")
    async with new_client() as impostor:
        async with impostor.get(
            f"{server.url}/demo", params={"user": "alice", "room": "lobby", "demo": "sse"}
        ) as response:
            assert response.status == 409
            body = await response.text()
        assert "already in use" in body
        assert "pick another" in body
        # no session cookie was handed out
        assert COOKIE not in {c.key for c in impostor.cookie_jar}
        # the nickname is free in another room
        async with impostor.get(
            f"{server.url}/demo", params={"user": "alice", "room": "other", "demo": "sse"}
        ) as response:
            assert response.status == 200
    # the same session may come back as often as it likes
    again = await login(client, server, "alice", demo="refresh")
    assert 'data-user="alice"' in again.page
    async with open_ws(client, server) as ws:
        await ws_until(ws, lambda fs: len(fs) >= 1)


async def test_nickname_is_compared_after_normalisation(
    server: Server, client: aiohttp.ClientSession
) -> None:
    await login(client, server, "e\u0301lodie", demo="websocket")
    async with new_client() as impostor, impostor.get(
        f"{server.url}/demo", params={"user": "\u00e9lodie", "demo": "sse"}
    ) as response:
        assert response.status == 409


@pytest.mark.parametrize("nickname", ["", "a" * 33, "bad name", "<script>", "x/y"])
async def test_invalid_nickname_400_with_reason(
    server: Server, client: aiohttp.ClientSession, nickname: str
) -> None:
    async with client.get(
        f"{server.url}/demo", params={"user": nickname, "demo": "websocket"}
    ) as response:
        assert response.status == 400
        body = await response.text()
    assert "nickname" in body.lower()
    assert COOKIE not in {c.key for c in client.cookie_jar}


async def test_unknown_technique_400(server: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(
        f"{server.url}/demo", params={"user": "alice", "demo": "carrier-pigeon"}
    ) as response:
        assert response.status == 400
        assert "four techniques" in await response.text()


async def test_a_taken_nickname_socket_of_an_expired_session_gets_4009(
    server: Server, client: aiohttp.ClientSession
) -> None:
    # alice's old session lost the name while away; its cookie cannot take it back
    await login(client, server, "alice", demo="websocket")
    sid = SessionSigner(SECRET).verify(cookie_of(client, server))
    assert sid is not None
    await server.broker.leave("lobby", "alice", sid.sid)
    async with new_client() as newcomer:
        await login(newcomer, server, "alice", demo="websocket")
        async with open_ws(client, server) as ws:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4009
            assert "already in use" in str(msg.extra)


async def test_invalid_room_at_demo_400(server: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(
        f"{server.url}/demo", params={"user": "alice", "room": "no/such room", "demo": "sse"}
    ) as response:
        assert response.status == 400
        body = await response.text()
    assert "room names are 1 to 64 characters" in body
    assert COOKIE not in {c.key for c in client.cookie_jar}


async def test_the_welcome_page_says_only_its_own_errors(
    server: Server, client: aiohttp.ClientSession
) -> None:
    # ?error= takes a code; any other text is not shown on our origin, escaped or not
    for hostile in ('<script>alert("x")</script>', "Your account is locked: call 555-0100"):
        async with client.get(f"{server.url}/", params={"error": hostile}) as response:
            body = await response.text()
        assert 'id="error"' not in body
        assert "alert" not in body
        assert "555-0100" not in body
    async with client.get(f"{server.url}/", params={"error": "nickname"}) as response:
        assert "pick a nickname first" in await response.text()


async def test_a_session_that_lost_its_nickname_cannot_speak_as_it(
    server: Server, client: aiohttp.ClientSession
) -> None:
    # alice leaves; a newcomer takes the name; the old cookie must not post as "alice"
    old = await login(client, server, "alice", demo="longpolling")
    await press_leave(client, server, old.csrf, "longpolling")
    async with new_client() as newcomer:
        await login(newcomer, server, "alice", demo="websocket")
        async with client.post(
            f"{server.url}/longpolling/room/messages",
            params={"room": "lobby"},
            json={"message": "it is me, honest", "csrf": old.csrf},
        ) as response:
            assert response.status == 409
            body = await response.json()
            assert body["error"] == "nickname_taken"
            assert "already in use" in body["reason"]
        async with client.post(
            f"{server.url}/refresh/room",
            params={"room": "lobby"},
            data={"message": "me again", "csrf": old.csrf},
            allow_redirects=False,
        ) as response:
            # refused and sent to the welcome page, which says why
            assert response.status == 303
            assert response.headers["Location"].startswith("/?")
            assert "error=taken" in response.headers["Location"]
        async with open_ws(client, server) as ws:
            msg = await ws.receive()
            assert ws.close_code == 4009, msg
    texts = [e.get("text") for e in await history(client, server)]
    assert "it is me, honest" not in texts
    assert "me again" not in texts


async def test_after_leave_the_session_stays_out_until_it_enters_again(
    server: Server, client: aiohttp.ClientSession
) -> None:
    page = await login(client, server, "alice", demo="longpolling")
    await press_leave(client, server, page.csrf, "longpolling")
    # a poll still running after the Leave, or a page left open, does not rejoin
    async with client.get(
        f"{server.url}/longpolling/room/messages", params={"room": "lobby"}
    ) as response:
        assert response.status == 410
        assert (await response.json())["error"] == "left"
    async with client.post(
        f"{server.url}/longpolling/room/messages",
        params={"room": "lobby"},
        json={"message": "still here?", "csrf": page.csrf},
    ) as response:
        assert response.status == 410
    async with open_ws(client, server) as ws:
        await ws.receive()
        assert ws.close_code == 4000
    async with client.get(
        f"{server.url}/sse/room/events", params={"room": "lobby"}
    ) as response:
        assert response.status == 410
    async with client.get(
        f"{server.url}/refresh/room", params={"room": "lobby"}, allow_redirects=False
    ) as response:
        assert response.status == 303
        assert response.headers["Location"].startswith("/?")
    assert await server.broker.members("lobby") == []
    events = [(e["type"], e["user"]) for e in await history(client, server)]
    assert events == [("join", "alice"), ("leave", "alice")]
    # entering again through the welcome page lifts it
    await login(client, server, "alice", demo="longpolling")
    assert await server.broker.members("lobby") == ["alice"]
    events = [(e["type"], e["user"]) for e in await history(client, server)]
    assert events == [("join", "alice"), ("leave", "alice"), ("join", "alice")]
