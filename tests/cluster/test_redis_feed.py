"""The Redis backend's one XREAD per process, in-process: what its listener is handed.

- A node's own appends reach its listener through the XREAD, exactly once, in order.
- A room that becomes watched while other nodes publish loses nothing: every event
  after the head its first read saw reaches the listener (RedisBackend._refresh_starts).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from chatroom.broker import Broker
from chatroom.broker.backend import Draft
from chatroom.broker.redis import RedisBackend
from chatroom.core.events import Event

pytestmark = pytest.mark.redis

SEED = 4242
# events in each room of the late-watch trials
TOTAL = 12
# how long to keep listening after the last expected event, for a duplicate to show
BLOCK_SLACK = 0.3


class Heard:
    """A listener that keeps, per room, the offsets it was handed (in order)."""

    def __init__(self) -> None:
        self.offsets: dict[str, list[int]] = defaultdict(list)
        self.epochs: dict[str, set[str]] = defaultdict(set)
        self._changed = asyncio.Event()

    def __call__(self, room: str, events: Sequence[Event]) -> None:
        for event in events:
            assert event.room == room
            self.offsets[room].append(event.offset)
            self.epochs[room].add(event.position.epoch)
        self._changed.set()

    async def until(self, done: Callable[[], bool], within: float = 5.0) -> None:
        try:
            async with asyncio.timeout(within):
                while True:
                    self._changed.clear()
                    if done():
                        return
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"listener not done within {within} s: {dict(self.offsets)}"
            ) from None

    async def reach(self, room: str, offset: int, within: float = 5.0) -> None:
        await self.until(lambda: offset in self.offsets[room], within)


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[list[tuple[RedisBackend, Heard]]]:
    """Two backends on one Redis, as two nodes would have, each with its listener."""
    opened: list[tuple[RedisBackend, Heard]] = []
    for _ in range(2):
        backend = RedisBackend(redis_url)
        heard = Heard()
        backend.set_listener(heard)
        await backend.start()
        opened.append((backend, heard))
    try:
        yield opened
    finally:
        for backend, _ in opened:
            await backend.close()


def message(text: str, user: str = "u") -> Draft:
    return Draft("message", user, 1764115200000, text)


async def test_own_appends_reach_the_listener_once_through_xread(
    nodes: list[tuple[RedisBackend, Heard]],
) -> None:
    (backend, heard), _ = nodes
    for room in ("one", "two"):
        backend.watch(room)
        assert not (await backend.read_after(room, None, 50)).events
    stored = await asyncio.gather(
        *(
            backend.append(room, message(f"{room}-{i}"))
            for i in range(25)
            for room in ("one", "two")
        )
    )
    for room in ("one", "two"):
        await heard.reach(room, 25)
    # a while longer: nothing comes twice
    await asyncio.sleep(BLOCK_SLACK)
    for room in ("one", "two"):
        assert heard.offsets[room] == list(range(1, 26)), room
        assert len(heard.epochs[room]) == 1
    assert {s.event.offset for s in stored if s.event.room == "one"} == set(range(1, 26))


async def test_appends_from_every_node_reach_every_listener_once_in_order(
    nodes: list[tuple[RedisBackend, Heard]],
) -> None:
    (one, heard_one), (two, heard_two) = nodes
    for backend in (one, two):
        backend.watch("shared")
        await backend.read_after("shared", None, 50)

    async def publish(backend: RedisBackend, name: str, rng: random.Random) -> None:
        for i in range(20):
            await asyncio.sleep(rng.uniform(0, 0.005))
            await backend.append("shared", message(f"{name}-{i}"))

    rng = random.Random(SEED)
    await asyncio.gather(
        publish(one, "one", random.Random(rng.random())),
        publish(two, "two", random.Random(rng.random())),
    )
    for heard in (heard_one, heard_two):
        await heard.reach("shared", 40)
    await asyncio.sleep(BLOCK_SLACK)
    assert heard_one.offsets["shared"] == heard_two.offsets["shared"] == list(range(1, 41))


async def test_room_watched_while_others_publish_misses_nothing(
    nodes: list[tuple[RedisBackend, Heard]],
) -> None:
    """Watch, read, XREAD start: whatever the interleaving, the head's successors all come.

    One room stays watched throughout, so the XREAD is blocked when a new room arrives
    and has to be woken up for it.
    """
    (late, heard), (other, _) = nodes
    late.watch("anchor")
    await late.read_after("anchor", None, 1)
    rng = random.Random(SEED)
    for trial in range(16):
        room = f"late-{trial}"
        early = rng.randint(0, 4)
        for i in range(early):
            await other.append(room, message(f"early-{i}"))

        async def keep_publishing(
            room: str = room, plan: random.Random = rng, early: int = early
        ) -> None:
            for _ in range(early, TOTAL):
                await other.append(room, message("x"))
                await asyncio.sleep(plan.uniform(0, 0.004))

        publisher = asyncio.create_task(keep_publishing())
        try:
            await asyncio.sleep(rng.uniform(0, 0.01))
            late.watch(room)
            await asyncio.sleep(rng.choice([0, 0, rng.uniform(0, 0.01)]))
            page = await late.read_after(room, None, 50)
        finally:
            await publisher
        head = page.head.offset if page.head else 0
        assert [e.offset for e in page.events] == list(range(1, head + 1))
        await heard.reach(room, TOTAL)
        offsets = heard.offsets[room]
        # every event after what the read saw, once each, in order (earlier ones may
        # come too: the listener may start below a head a subscriber saw)
        assert offsets == sorted(set(offsets)), f"trial {trial}: {offsets}"
        assert [o for o in offsets if o > head] == list(range(head + 1, TOTAL + 1)), (
            f"trial {trial}: read saw head {head}, listener got {offsets}"
        )


async def test_close_leaves_no_connection_open(redis_url: str) -> None:
    """Every connection the backend opened (pool, reader, unblocks) is closed by close()."""
    name = f"chatroom-close-{random.Random().randrange(1 << 30)}"
    backend = RedisBackend(f"{redis_url}?client_name={name}")
    heard = Heard()
    backend.set_listener(heard)
    await backend.start()
    observer = aioredis.Redis.from_url(redis_url)

    async def named() -> list[dict[str, Any]]:
        clients: list[dict[str, Any]] = await observer.client_list()
        return [c for c in clients if c.get("name") == name]

    try:
        for room in ("a", "b", "c"):
            backend.watch(room)
            await backend.read_after(room, None, 10)
        await asyncio.gather(*(backend.append("a", message(f"m{i}")) for i in range(10)))
        await heard.reach("a", 10)
        backend.unwatch("b")
        assert len(await named()) >= 2  # the reader and at least one pooled connection
        await backend.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        while left := await named():
            assert loop.time() < deadline, f"still open after close(): {left}"
            await asyncio.sleep(0.05)
    finally:
        await observer.aclose()


async def test_subscriber_joining_a_busy_room_gets_every_event(redis_url: str) -> None:
    """The broker over it: archive plus live, no gap, no duplicate, while another node says."""
    node_a = Broker(RedisBackend(redis_url))
    node_b = RedisBackend(redis_url)
    await node_a.start()
    await node_b.start()
    try:
        rng = random.Random(SEED)
        for trial in range(6):
            room = f"busy-{trial}"
            early = rng.randint(0, 60)
            for i in range(early):
                await node_b.append(room, message(f"before-{i}"))
            last = early + 30

            async def keep_saying(room: str = room) -> None:
                for i in range(30):
                    await node_b.append(room, message(f"live-{i}"))
                    await asyncio.sleep(rng.uniform(0, 0.003))

            sayer = asyncio.create_task(keep_saying())
            try:
                await asyncio.sleep(rng.uniform(0, 0.02))
                batches: list[list[int]] = []
                async with node_a.subscribe(room) as sub, asyncio.timeout(10):
                    async for batch in sub:
                        assert all(isinstance(item, Event) for item in batch), batch
                        batches.append([i.offset for i in batch if isinstance(i, Event)])
                        if batches[-1] and batches[-1][-1] >= last:
                            break
            finally:
                await sayer
            got = [o for b in batches for o in b]
            assert got == list(range(got[0], last + 1)), f"trial {trial}: {got}"
            # the first batch is the archive: the last 50 at the time (or all there were)
            archive = batches[0]
            assert archive[0] == max(1, archive[-1] - 49), f"trial {trial}: {archive}"
    finally:
        await node_a.close()
        await node_b.close()
