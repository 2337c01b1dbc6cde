"""Redis stops mid-chat and comes back (empty: no persistence)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from chatroom.core.events import Position
from tests.cluster.nodes import (
    Cluster,
    Node,
    WSFeed,
    login,
    new_client,
    position,
    ready_status,
    say_lp,
    say_lp_status,
)
from tests.redis_server import RedisServer
from tests.support import eventually

pytestmark = pytest.mark.redis

ROOM = "outage"
# says refused while Redis is down: the log must not grow a line for each
REFUSED = 6


async def wait_status(http: aiohttp.ClientSession, node: Node, want: int, within: float) -> None:
    async def answers() -> bool:
        return await ready_status(http, node) == want

    await eventually(answers, within, step=0.1, why=lambda: f"{node.name} /readyz is not {want}")


async def test_redis_outage_refuses_says_keeps_sockets_and_recovers(
    private_cluster: Cluster, private_redis: RedisServer
) -> None:
    a, b = await private_cluster.start(2)
    async with new_client() as alice, new_client() as bob, aiohttp.ClientSession() as http:
        await login(alice, a, "alice", ROOM, "websocket")
        speaker = await login(bob, b, "bob", ROOM)
        ws = await WSFeed.open(alice, a, ROOM, label="alice")
        try:
            before = await say_lp(bob, b, ROOM, speaker.csrf, "before")
            await ws.wait_text("before")

            private_redis.stop()
            for node in (a, b):
                await wait_status(http, node, 503, within=5)
            for i in range(REFUSED):
                status, answer = await say_lp_status(
                    bob, b, ROOM, speaker.csrf, f"lost-{i}", client_id=f"x{i}"
                )
                assert status == 503, answer
                assert answer["error"] == "unavailable"
                assert "redis is unreachable" in answer["reason"]
            error = await ws.say("into the void", "void-1")
            assert error["type"] == "error", error
            assert error["error"] == "unavailable", error
            assert "redis" in error["reason"]
            # a while down (the reader retries with back-off): the socket stays open
            await asyncio.sleep(2.0)
            assert ws.running
            assert not ws.ws.closed

            private_redis.restart()
            for node in (a, b):
                await wait_status(http, node, 200, within=10)
            # A's reader is back too before anyone speaks (the stream is gone until then)
            await wait_log(a, "is reachable again", within=10)
            # Redis came back empty: bob's presence went with the stream, and only a member
            # speaks. His page polls again, as a long-poll page does, and is back (a join).
            async with bob.get(f"{b.url}/longpolling/room", params={"room": ROOM}) as page:
                assert page.status == 200, await page.text()
            after = await say_lp(bob, b, ROOM, speaker.csrf, "after")
            # the stream is new: alice is told (reset), then gets what it holds now
            frames = await ws.wait_text("after", within=10)
            assert ws.running
        finally:
            await ws.close()

    new = position(after)
    assert new.epoch != position(before).epoch
    assert new.offset == 2  # after bob's join
    tail = frames[frames.index(next(f for f in frames if f.get("text") == "before")) + 1 :]
    tail = [f for f in tail if f.get("type") != "error"]
    join = tail[1]
    assert (join["type"], join["user"]) == ("join", "bob"), tail
    assert position(join) == Position(new.epoch, 1)
    assert tail[0] == {"type": "reset", "id": join["id"]}, tail
    assert [f["id"] for f in tail[1:]] == [join["id"], after["id"]]
    assert not [f for f in frames if isinstance(f.get("text"), str) and "lost" in f["text"]]

    # the node that reads streams tells the outage once, and its end once
    log_a = a.log()
    assert log_a.count("reading streams failed") == 1, log_a
    assert log_a.count("is reachable again") == 1, log_a


async def test_redis_outage_is_logged_once_not_per_request(
    private_cluster: Cluster, private_redis: RedisServer
) -> None:
    (a,) = await private_cluster.start(1)
    async with new_client() as bob, aiohttp.ClientSession() as http:
        speaker = await login(bob, a, "bob", ROOM)
        private_redis.stop()
        await wait_status(http, a, 503, within=5)
        for i in range(REFUSED):
            status, _ = await say_lp_status(bob, a, ROOM, speaker.csrf, f"lost-{i}")
            assert status == 503
        await asyncio.sleep(2.5)
        private_redis.restart()
        await wait_status(http, a, 200, within=10)
    told = [line for line in a.log().splitlines() if "unreachable" in line]
    assert len(told) <= 2, "\n".join(told)


async def wait_log(node: Node, text: str, within: float) -> None:
    await eventually(lambda: text in node.log(), within, step=0.1, why=node.log)
