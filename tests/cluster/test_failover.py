"""A node dies (SIGKILL): its clients resume on another node; its members leave."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.cluster.nodes import (
    Cluster,
    Feed,
    Frame,
    Node,
    SSEFeed,
    WSFeed,
    assert_contiguous,
    login,
    new_client,
    presence,
    say_lp,
    wait_ready,
)

pytestmark = pytest.mark.redis

ROOM = "failover"
# Node A's presence TTL: its members must leave this long (plus a reap) after it dies;
# the clients that come back on B must do so within it (a heartbeat is TTL / 3).
TTL = 6.0


def left(user: str) -> Callable[[list[Frame]], bool]:
    def done(frames: list[Frame]) -> bool:
        return any(f.get("type") == "leave" and f.get("user") == user for f in frames)

    return done


async def members_leave_after_kill(cluster: Cluster, a: Node, b: Node, within: float) -> None:
    async with (
        new_client() as alice,
        new_client() as bob,
        new_client() as carl,
        new_client() as zed,
    ):
        speaker = await login(zed, b, "zed", ROOM)
        await login(alice, a, "alice", ROOM, "websocket")
        await login(bob, a, "bob", ROOM, "sse")
        await login(carl, a, "carl", ROOM, "websocket")
        # zed stays connected on B throughout (a poller who only says would expire)
        stays = await WSFeed.open(zed, b, ROOM, label="zed")
        ws = await WSFeed.open(alice, a, ROOM, label="alice")
        sse = await SSEFeed.open(bob, a, ROOM, label="bob")
        gone = await WSFeed.open(carl, a, ROOM, label="carl")
        feeds: list[Feed] = [stays, ws, sse, gone]
        try:
            await say_lp(zed, b, ROOM, speaker.csrf, "before")
            for feed in feeds:
                await feed.wait_text("before")
            assert await presence(zed, b, ROOM) == ["alice", "bob", "carl", "zed"]

            await cluster.kill(a)
            killed = time.monotonic()
            said = [
                (await say_lp(zed, b, ROOM, speaker.csrf, f"meanwhile-{i}"))["id"]
                for i in range(3)
            ]
            await ws.until(lambda _: not ws.running, within=5)
            await sse.until(lambda _: not sse.running, within=5)

            # alice and bob come back on B, each from the last id it got
            ws_last = ws.events()[-1]["id"]
            sse_last = [i for i in sse.sse_ids if i][-1]
            assert ws_last == sse_last == ws.events()[-1]["id"]
            ws_b = await WSFeed.open(alice, b, ROOM, last=ws_last, label="alice-again")
            sse_b = await SSEFeed.open(bob, b, ROOM, last_event_id=sse_last, label="bob-again")
            feeds += [ws_b, sse_b]
            for feed in (ws_b, sse_b):
                await feed.wait_text("meanwhile-2")
                assert not [f for f in feed.frames if f.get("type") == "reset"]
                assert_contiguous(feed.events(), after=ws_last)
                assert [e["id"] for e in feed.events()][:3] == said

            # carl stays away: his membership expires and one node says he left
            await ws_b.until(left("carl"), within=within)
            waited = time.monotonic() - killed
            assert waited < within
            await sse_b.until(left("carl"), within=5)
            assert await presence(zed, b, ROOM) == ["alice", "bob", "zed"]
            await say_lp(zed, b, ROOM, speaker.csrf, "after")
            for feed in (ws_b, sse_b):
                await feed.wait_text("after")
                assert_contiguous(feed.events(), after=ws_last)
                leaves = [e for e in feed.events() if e["type"] == "leave"]
                # alice and bob never left: they were back before their leases ran out
                assert [e["user"] for e in leaves] == ["carl"]
        finally:
            for feed in feeds:
                await feed.close()


async def test_sigkilled_node_clients_resume_elsewhere_and_its_members_leave(
    cluster: Cluster,
) -> None:
    a = cluster.spawn(presence_ttl=TTL)
    b = cluster.spawn()
    await asyncio.gather(wait_ready(a), wait_ready(b))
    await members_leave_after_kill(cluster, a, b, within=TTL + 6)


@pytest.mark.slow
async def test_sigkilled_node_members_leave_within_35s_with_default_ttl(
    cluster: Cluster,
) -> None:
    """The deploy guide's promise with a stock node: a dead node's members go within ~30 s."""
    a, b = await cluster.start(2)
    await members_leave_after_kill(cluster, a, b, within=35)
