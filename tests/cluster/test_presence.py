"""Presence across the cluster: one member list, one join per nickname, names held everywhere."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from tests.cluster.nodes import (
    Cluster,
    Feed,
    LPFeed,
    SSEFeed,
    WSFeed,
    demo_status,
    login,
    new_client,
    presence,
    say_lp,
    wait_ready,
)

pytestmark = pytest.mark.redis

ROOM = "presence"


async def test_members_are_the_union_of_every_node(cluster: Cluster) -> None:
    a, b, c = await cluster.start(3)
    async with new_client() as alice, new_client() as bob, new_client() as carol:
        await login(alice, a, "alice", ROOM, "websocket")
        await login(bob, b, "bob", ROOM, "sse")
        first = await login(carol, c, "carol", ROOM)
        feeds: list[Feed] = [
            await WSFeed.open(alice, a, ROOM),
            await SSEFeed.open(bob, b, ROOM),
            LPFeed.open(carol, [c], ROOM, last=first.last_id),
        ]
        try:
            for node in (a, b, c):
                assert await presence(alice, node, ROOM) == ["alice", "bob", "carol"]
            async with alice.get(f"{b.url}/api/rooms") as response:
                rooms = (await response.json())["rooms"]
            assert {"name": ROOM, "members": 3} in rooms
        finally:
            for feed in feeds:
                await feed.close()


async def test_one_join_per_nickname_cluster_wide(cluster: Cluster) -> None:
    a, b = await cluster.start(2)
    async with new_client() as dave, new_client() as watcher:
        seen = await login(watcher, b, "watcher", ROOM, "websocket")
        watch = await WSFeed.open(watcher, b, ROOM, last=seen.last_id, label="watcher")
        feeds: list[Feed] = [watch]
        try:
            page = await login(dave, a, "dave", ROOM, "websocket")  # join (the claim)
            # the same session on both nodes at once: no second join
            both = await asyncio.gather(
                WSFeed.open(dave, a, ROOM, label="dave-a"),
                WSFeed.open(dave, b, ROOM, label="dave-b"),
            )
            for one in both:
                await one.close()
            # leave, enter again (the welcome page: a Leave keeps a session out until
            # then), and connect on both nodes at the very same time: exactly one join
            async with dave.post(
                f"{a.url}/websocket/room/leave",
                params={"room": ROOM},
                data={"csrf": page.csrf},
                allow_redirects=False,
            ) as response:
                assert response.status == 303, await response.text()
            await watch.until(
                lambda fs: any(f.get("type") == "leave" and f.get("user") == "dave" for f in fs)
            )
            page = await login(dave, b, "dave", ROOM, "websocket")
            feeds += await asyncio.gather(
                WSFeed.open(dave, a, ROOM, label="dave-a2"),
                WSFeed.open(dave, b, ROOM, label="dave-b2"),
                SSEFeed.open(dave, b, ROOM, label="dave-b3"),
            )
            # a closing tab does not make dave leave: his other connections keep him
            await feeds[-1].close()
            await say_lp(dave, b, ROOM, page.csrf, "still here")
            await watch.wait_text("still here")
            kinds = [(e["type"], e["user"]) for e in watch.events() if e["user"] == "dave"]
            assert kinds == [
                ("join", "dave"),
                ("leave", "dave"),
                ("join", "dave"),
                ("message", "dave"),
            ]
            for node in (a, b):
                assert await presence(watcher, node, ROOM) == ["dave", "watcher"]
        finally:
            for feed in feeds:
                await feed.close()


async def test_nickname_held_on_one_node_is_taken_on_every_other(cluster: Cluster) -> None:
    a, b = await cluster.start(2)
    async with new_client() as alice, new_client() as bob:
        await login(alice, a, "alice", ROOM, "websocket")
        await login(bob, b, "bob", ROOM, "sse")
        held = [await WSFeed.open(alice, a, ROOM), await SSEFeed.open(bob, b, ROOM)]
        try:
            for name, node in (("alice", b), ("bob", a)):
                async with new_client() as impostor:
                    status, page = await demo_status(impostor, node, name, ROOM)
                    assert status == 409, page
                    assert "already in use" in page
                    # and no session was handed out for it
                    assert not impostor.cookie_jar.filter_cookies(URL(node.url))
            # the name is free in another room
            async with new_client() as other:
                await login(other, b, "alice", "elsewhere")
        finally:
            for feed in held:
                await feed.close()


async def test_presence_agrees_with_the_events_after_a_leave_on_another_node(
    cluster: Cluster,
) -> None:
    # a short TTL: the heartbeat (TTL / 3) runs every second
    a = cluster.spawn(presence_ttl=3)
    b = cluster.spawn(presence_ttl=3)
    await asyncio.gather(wait_ready(a), wait_ready(b))
    async with new_client() as dave, new_client() as watcher:
        seen = await login(watcher, a, "watcher", ROOM, "websocket")
        watch = await WSFeed.open(watcher, a, ROOM, last=seen.last_id, label="watcher")
        page = await login(dave, a, "dave", ROOM, "websocket")
        elsewhere = await WSFeed.open(dave, b, ROOM, label="dave-b")
        try:
            async with dave.post(
                f"{a.url}/websocket/room/leave",
                params={"room": ROOM},
                data={"csrf": page.csrf},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
            await watch.until(
                lambda fs: any(f.get("type") == "leave" and f.get("user") == "dave" for f in fs)
            )
            # a few of node B's heartbeats: does dave come back without a join?
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 4
            while "dave" not in (members := await presence(watcher, a, ROOM)):
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.2)
            said = [e["type"] for e in watch.events() if e["user"] == "dave"]
            last = [t for t in said if t in ("join", "leave")][-1]
            assert ("dave" in members) == (last == "join"), (members, said)
        finally:
            await elsewhere.close()
            await watch.close()
