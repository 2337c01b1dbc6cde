"""Cross-node delivery: say on one node, receive on another, with every technique."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from tests.cluster.nodes import (
    Cluster,
    Frame,
    LPFeed,
    Node,
    SSEFeed,
    WSFeed,
    assert_contiguous,
    login,
    new_client,
    position,
    refresh_page,
    say_form,
    say_lp,
)

pytestmark = pytest.mark.redis

ROOM = "crossnode"


async def test_every_technique_says_on_a_and_every_technique_receives_on_b(
    cluster: Cluster,
) -> None:
    a, b = await cluster.start(2)
    async with (
        new_client() as alice,
        new_client() as bob,
        new_client() as carol,
        new_client() as dave,
        new_client() as erin,
    ):
        # the readers log in on B, then alice on A: everyone starts after her join
        await login(bob, b, "bob", ROOM, "websocket")
        await login(carol, b, "carol", ROOM, "sse")
        await login(dave, b, "dave", ROOM, "longpolling")
        await login(erin, b, "erin", ROOM, "refresh")
        start = await login(alice, a, "alice", ROOM, "websocket")
        assert start.last_id, "alice's join is the last event"

        ws_b = await WSFeed.open(bob, b, ROOM, last=start.last_id, label="bob-ws")
        sse_b = await SSEFeed.open(carol, b, ROOM, last=start.last_id, label="carol-sse")
        lp_b = LPFeed.open(dave, [b], ROOM, last=start.last_id, label="dave-lp")
        ws_a = await WSFeed.open(alice, a, ROOM, last=start.last_id, label="alice-ws")
        feeds = [ws_b, sse_b, lp_b]
        try:
            said: list[str] = []
            ack = await ws_a.say("over a websocket", "c-1")
            assert ack["type"] == "ack", ack
            said.append(ack["id"])
            stored = await say_lp(alice, a, ROOM, start.csrf, "over a long-poll post")
            assert stored["user"] == "alice"
            said.append(stored["id"])
            await say_form(alice, a, ROOM, start.csrf, "over the refresh form")
            texts = ["over a websocket", "over a long-poll post", "over the refresh form"]

            for feed in feeds:
                await feed.wait_text(texts[-1])
                messages = [e for e in feed.events() if e["type"] == "message"]
                assert [m["text"] for m in messages] == texts, feed.label
                assert {m["user"] for m in messages} == {"alice"}
                assert [m["id"] for m in messages][:2] == said
                # nothing before or between is missing: the first event follows alice's join
                assert_contiguous(feed.events(), after=start.last_id)
            # every technique saw the very same events
            ids = [[e["id"] for e in f.events()] for f in feeds]
            assert ids[0] == ids[1] == ids[2]
            # SSE's id: field is the event id
            assert sse_b.sse_ids == [e["id"] for e in sse_b.frames]

            page = await refresh_page(erin, b, ROOM)
            on_page = [(i, t) for i, t in page if i in ids[0]]
            assert [i for i, _ in on_page] == [
                e["id"] for e in ws_b.events() if e["type"] == "message"
            ]
            for (_, content), text in zip(on_page, texts, strict=True):
                assert text in content
                assert "alice" in content
        finally:
            for feed in [*feeds, ws_a]:
                await feed.close()


async def test_long_poll_alternating_nodes_needs_no_sticky_session(cluster: Cluster) -> None:
    """Each poll goes to the other node; every event arrives once, in order."""
    a, b = await cluster.start(2)
    rng = random.Random(20240611)
    async with new_client() as poller, new_client() as p1, new_client() as p2:
        first = await login(poller, a, "poller", ROOM)
        one = await login(p1, a, "speaker-a", ROOM)
        two = await login(p2, b, "speaker-b", ROOM)
        feed = LPFeed.open(poller, [a, b], ROOM, last=first.last_id, label="alternating")
        try:
            stored: list[Frame] = []

            async def speak(
                client: aiohttp.ClientSession, node: Node, csrf: str, name: str, count: int
            ) -> None:
                for i in range(count):
                    await asyncio.sleep(rng.uniform(0.0, 0.25))
                    stored.append(await say_lp(client, node, ROOM, csrf, f"{name}-{i}"))

            await asyncio.gather(
                speak(p1, a, one.csrf, "a", 10), speak(p2, b, two.csrf, "b", 10)
            )
            last_id = max(stored, key=position)["id"]
            await feed.until(lambda fs: any(f.get("id") == last_id for f in fs), within=15)
        finally:
            await feed.close()
        events = feed.events()
        assert not [f for f in feed.frames if f.get("type") == "reset"]
        assert_contiguous(events, after=first.last_id)
        got = [e["id"] for e in events if e["type"] == "message"]
        assert sorted(e["id"] for e in stored) == sorted(got)
        assert len(set(got)) == len(got) == len(stored)
        # the polls really went to both nodes, one after the other
        assert len(feed.answered_by) >= 2
        assert set(feed.answered_by) == {a.name, b.name}
