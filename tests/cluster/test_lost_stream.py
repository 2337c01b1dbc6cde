"""A room's Redis stream is lost while Redis stays up (FLUSHDB), and the next says start
it afresh: a live subscriber on another node is told (reset), then gets every new say.

Before the fix, such a subscriber got nothing and was told nothing: its node read the
room's stream on after the old stream's last id, which the new stream's ids are below.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from chatroom.core.events import Position
from tests.cluster.nodes import (
    Cluster,
    Frame,
    SSEFeed,
    WSFeed,
    assert_contiguous,
    login,
    new_client,
    position,
    say_lp,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

ROOM = "flushed"


async def flushdb(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url(0))
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.mark.parametrize("technique", ["websocket", "sse"])
async def test_flushdb_between_says_gives_subscribers_on_another_node_a_reset_then_the_says(
    private_cluster: Cluster, private_redis: RedisServer, technique: str
) -> None:
    a, b = await private_cluster.start(2)
    async with new_client() as alice, new_client() as bob:
        start = await login(alice, a, "alice", ROOM, technique)
        speaker = await login(bob, b, "bob", ROOM)
        feed: WSFeed | SSEFeed
        if technique == "websocket":
            feed = await WSFeed.open(alice, a, ROOM, last=start.last_id, label="alice")
        else:
            feed = await SSEFeed.open(alice, a, ROOM, last=start.last_id, label="alice")
        try:
            before = [await say_lp(bob, b, ROOM, speaker.csrf, f"before-{i}") for i in range(3)]
            await feed.wait_text("before-2")

            await flushdb(private_redis)
            # Presence went with it: bob's page polls again (as it does every 25 s at
            # most), which makes him a member of the room again, and then he speaks.
            async with bob.get(
                f"{b.url}/longpolling/room/messages", params={"room": ROOM}
            ) as response:
                assert response.status == 200, await response.text()
            # fewer than the old stream held: their ids are all below its last one
            after = [await say_lp(bob, b, ROOM, speaker.csrf, f"after-{i}") for i in range(3)]
            frames = await feed.wait_text("after-2", within=10)
        finally:
            await feed.close()

    old, new = position(before[0]).epoch, position(after[0]).epoch
    assert new != old
    assert position(after[0]).offset <= 3
    split = frames.index(next(f for f in frames if f.get("text") == "before-2")) + 1
    assert_contiguous(frames[:split], after=start.last_id)
    tail: list[Frame] = frames[split:]
    assert tail, frames
    reset, events = tail[0], tail[1:]
    assert reset["type"] == "reset", tail
    # the oldest the new stream holds, then all it holds, in order, the says among them
    assert reset["id"] == events[0]["id"], tail
    assert position(events[0]) == Position(new, 1)
    assert_contiguous(events)
    assert [e["text"] for e in events if e["type"] == "message"] == [
        "after-0", "after-1", "after-2"
    ]
    assert [e["id"] for e in events if e["type"] == "message"] == [s["id"] for s in after]
