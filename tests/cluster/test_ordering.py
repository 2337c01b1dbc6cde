"""Order under concurrent publishes from every node: one sequence, seen alike everywhere."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import pytest

from tests.cluster.nodes import (
    Cluster,
    Feed,
    Frame,
    LPFeed,
    Node,
    SSEFeed,
    WSFeed,
    assert_contiguous,
    login,
    new_client,
    position,
    say_lp,
)

pytestmark = pytest.mark.redis

ROOM = "order"
SEED = 1764115200
PUBLISHERS_PER_NODE = 2
# under the per-session burst (10), so no say is refused as a flood
MESSAGES_EACH = 10


@asynccontextmanager
async def closing(feeds: list[Feed]) -> AsyncIterator[list[Feed]]:
    try:
        yield feeds
    finally:
        for feed in feeds:
            await feed.close()


async def test_concurrent_publishers_on_three_nodes_one_order_everywhere(
    cluster: Cluster,
) -> None:
    nodes = await cluster.start(3)
    rng = random.Random(SEED)
    async with AsyncExitStack() as stack:

        async def client() -> aiohttp.ClientSession:
            return await stack.enter_async_context(new_client())

        # publishers: two per node, each with its own technique and schedule
        publishers: list[tuple[str, aiohttp.ClientSession, Node, str]] = []
        for n, node in enumerate(nodes):
            for k in range(PUBLISHERS_PER_NODE):
                name = f"pub{n}{k}"
                c = await client()
                publishers.append((name, c, node, (await login(c, node, name, ROOM)).csrf))
        # subscribers: WebSocket, SSE and long polling on every node, all logged in
        # before the start mark, all resuming right after it
        readers = []
        for n, node in enumerate(nodes):
            for technique in ("ws", "sse", "lp"):
                c = await client()
                await login(c, node, f"{technique}{n}", ROOM)
                readers.append((technique, c, node))
        mark = await client()
        marker = await login(mark, nodes[0], "marker", ROOM)
        start = (await say_lp(mark, nodes[0], ROOM, marker.csrf, "start"))["id"]

        feeds: list[Feed] = []
        for technique, c, node in readers:
            if technique == "ws":
                feeds.append(await WSFeed.open(c, node, ROOM, last=start, label="ws"))
            elif technique == "sse":
                feeds.append(await SSEFeed.open(c, node, ROOM, last_event_id=start))
            else:
                feeds.append(LPFeed.open(c, [node], ROOM, last=start))
        await stack.enter_async_context(closing(feeds))

        acked: dict[str, list[str]] = {}

        async def publish(
            name: str, c: aiohttp.ClientSession, node: Node, csrf: str, plan: random.Random
        ) -> None:
            ids = acked[name] = []
            ws = await WSFeed.open(c, node, ROOM, last=start, label=name)
            try:
                for i in range(MESSAGES_EACH):
                    await asyncio.sleep(plan.uniform(0.0, 0.05))
                    text = f"{name}-{i}"
                    if plan.random() < 0.5:
                        ack = await ws.say(text, f"{name}-c{i}")
                        assert ack["type"] == "ack", ack
                        ids.append(ack["id"])
                    else:
                        ids.append((await say_lp(c, node, ROOM, csrf, text))["id"])
            finally:
                await ws.close()

        # one seeded schedule: each publisher draws its delays and techniques from it
        await asyncio.gather(
            *(
                publish(name, c, node, csrf, random.Random(rng.random()))
                for name, c, node, csrf in publishers
            )
        )
        end = (await say_lp(mark, nodes[0], ROOM, marker.csrf, "end"))["id"]
        for feed in feeds:
            await feed.until(lambda fs: any(f.get("id") == end for f in fs), within=15)

    sequences: list[list[str]] = []
    for feed in feeds:
        events = feed.events()
        assert not [f for f in feed.frames if f.get("type") == "reset"], feed.label
        upto = [e["id"] for e in events].index(end) + 1
        assert_contiguous(events[:upto], after=start)
        sequences.append([e["id"] for e in events[:upto]])
    assert all(seq == sequences[0] for seq in sequences), "subscribers disagree on order"

    # each publisher's messages: every one acknowledged is there once, in the order said
    everything: list[Frame] = feeds[0].events()
    by_id = {e["id"]: e for e in everything}
    said = [i for ids in acked.values() for i in ids]
    assert len(said) == len(set(said)) == PUBLISHERS_PER_NODE * 3 * MESSAGES_EACH
    for name, ids in acked.items():
        assert [by_id[i]["text"] for i in ids] == [f"{name}-{i}" for i in range(MESSAGES_EACH)]
        assert [position(by_id[i]) for i in ids] == sorted(position(by_id[i]) for i in ids)
    messages = [e["id"] for e in everything if e["type"] == "message"]
    assert sorted(messages, key=lambda i: position(by_id[i])) == messages
    assert set(said) | {end} == set(messages)
