"""The Redis backend's one XREAD per process, in-process: what its listener is handed.

- A node's own appends reach its listener through the XREAD, exactly once, in order.
- A room that becomes watched while other nodes publish loses nothing: every event
  after the head its first read saw reaches the listener (RedisBackend._refresh_starts).
- A room whose stream is lost while Redis stays up (FLUSHDB, DEL, eviction) or with it
  (a restart without persistence) and started afresh reaches the listener from the new
  stream's start, and the broker's subscribers get a reset, then every new event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from chatroom.broker import Broker, Reset
from chatroom.broker.backend import BackendUnavailable, Draft
from chatroom.broker.redis import RedisBackend
from chatroom.core.events import Event, Position
from tests.redis_server import RedisServer

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
        self.positions: dict[str, list[Position]] = defaultdict(list)
        self._changed = asyncio.Event()

    def __call__(self, room: str, events: Sequence[Event]) -> None:
        for event in events:
            assert event.room == room
            self.offsets[room].append(event.offset)
            self.epochs[room].add(event.position.epoch)
            self.positions[room].append(event.position)
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


@contextlib.asynccontextmanager
async def two_nodes(url: str) -> AsyncIterator[list[tuple[RedisBackend, Heard]]]:
    """Two backends on one Redis, as two nodes would have, each with its listener."""
    opened: list[tuple[RedisBackend, Heard]] = []
    try:
        for _ in range(2):
            backend = RedisBackend(url)
            heard = Heard()
            backend.set_listener(heard)
            await backend.start()
            opened.append((backend, heard))
        yield opened
    finally:
        for backend, _ in opened:
            await backend.close()


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[list[tuple[RedisBackend, Heard]]]:
    async with two_nodes(redis_url) as opened:
        yield opened


@pytest.fixture
async def private_nodes(
    private_redis: RedisServer,
) -> AsyncIterator[list[tuple[RedisBackend, Heard]]]:
    """Two nodes on a Redis of this test's own, which it may flush, stop and restart."""
    async with two_nodes(private_redis.url(0)) as opened:
        yield opened


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


# --- a room's stream lost and started afresh ------------------------------------------

LOST = "lost"
# events stored before the loss: the new stream's first ids are below this head
OLD = 5
# how a room's stream can be lost: while Redis stays up (FLUSHDB; DEL of its keys, as
# an allkeys-* maxmemory policy may evict them; its meta hash alone, which starts the
# stream afresh at the next append), or with it (a restart without persistence)
LOSSES = ["flushdb", "del", "del-meta", "restart"]


def room_keys(room: str) -> list[str]:
    return [f"chatroom:{{{room}}}:meta", f"chatroom:{{{room}}}:stream"]


async def lose(how: str, server: RedisServer, room: str) -> None:
    if how == "restart":
        server.stop()
        server.restart()
        return
    client = aioredis.Redis.from_url(server.url(0))
    try:
        if how == "flushdb":
            await client.flushdb()
        elif how == "del":
            await client.delete(*room_keys(room))
        else:
            await client.delete(room_keys(room)[0])
    finally:
        await client.aclose()


async def append_soon(backend: RedisBackend, room: str, draft: Draft) -> Event:
    """Append, retrying while the backend reconnects to a restarted Redis (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            return (await backend.append(room, draft)).event
        except BackendUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("count", [3, 8], ids=["below-old-head", "past-old-head"])
@pytest.mark.parametrize("how", LOSSES)
async def test_a_stream_started_afresh_reaches_the_listener_from_its_start(
    private_nodes: list[tuple[RedisBackend, Heard]],
    private_redis: RedisServer,
    how: str,
    count: int,
) -> None:
    """The reader was past offset OLD of the old stream: the new one's 1.. all come."""
    (reader, heard), (writer, _) = private_nodes
    reader.watch(LOST)
    await reader.read_after(LOST, None, 50)
    old = [(await writer.append(LOST, message(f"old-{i}"))).event for i in range(OLD)]
    await heard.reach(LOST, OLD)

    await lose(how, private_redis, LOST)
    new = [await append_soon(writer, LOST, message(f"new-{i}")) for i in range(count)]
    assert new[0].position.epoch != old[0].position.epoch
    assert [e.offset for e in new] == list(range(1, count + 1))

    expected = [e.position for e in old + new]
    await heard.until(lambda: len(heard.positions[LOST]) >= len(expected), within=10)
    await asyncio.sleep(BLOCK_SLACK)  # nothing comes twice
    assert heard.positions[LOST] == expected


async def test_a_fresh_start_whose_notice_was_lost_is_read_from_its_start(
    private_nodes: list[tuple[RedisBackend, Heard]], private_redis: RedisServer
) -> None:
    """The stream outgrew the old head before the reader looked, and nothing told it the
    stream had started afresh: the new epoch's ids alone make it read from the start."""
    (reader, heard), (writer, _) = private_nodes
    reader.watch(LOST)
    await reader.read_after(LOST, None, 50)
    old = [(await writer.append(LOST, message(f"old-{i}"))).event for i in range(OLD)]
    await heard.reach(LOST, OLD)

    await lose("del-meta", private_redis, LOST)
    # one transaction: the reader wakes once it is done, the notice already gone
    async with writer._redis.pipeline(transaction=True) as pipe:
        for i in range(OLD + 3):
            keys, args = writer._append_call(LOST, message(f"new-{i}"))
            await writer._append(keys=keys, args=args, client=pipe)
        pipe.delete(writer._keys.fresh)
        answers = await pipe.execute()
    new = [Event.decode(bytes(data)) for _, data in answers[:-1]]
    assert [e.offset for e in new] == list(range(1, OLD + 4))

    expected = [e.position for e in old + new]
    await heard.until(lambda: len(heard.positions[LOST]) >= len(expected), within=10)
    await asyncio.sleep(BLOCK_SLACK)
    assert heard.positions[LOST] == expected


async def follow_until_last(
    broker: Broker, room: str, hop: bool, got: list[Event | Reset]
) -> None:
    """Subscribe (archive first) and keep what comes until the message "last".

    With `hop`, leave after the first batch and subscribe again from its cursor."""
    cursor: Position | None = None
    async with broker.subscribe(room) as sub:
        async for batch in sub:
            got.extend(batch)
            if any(isinstance(d, Event) and d.text == "last" for d in batch):
                return
            cursor = sub.cursor
            if hop and cursor is not None:
                break
    async with broker.subscribe(room, cursor) as sub:
        async for batch in sub:
            got.extend(batch)
            if any(isinstance(d, Event) and d.text == "last" for d in batch):
                return


async def test_subscribers_get_a_reset_then_every_event_of_a_stream_started_afresh(
    private_redis: RedisServer,
) -> None:
    """Through the broker, the loss at any moment around a subscriber's start.

    Even trials subscribe on a node that has watched another room all along (its XREAD
    is blocked when the room is lost), odd ones on a node started for the trial (a
    restarted node). Some subscribers leave after their first batch and come back from
    their cursor (the room is unwatched, then watched again).
    """
    url = private_redis.url(0)
    writer = RedisBackend(url)
    await writer.start()
    steady = Broker(RedisBackend(url))
    await steady.start()
    anchor = steady.subscribe("anchor")
    observer = aioredis.Redis.from_url(url)
    rng = random.Random(SEED)
    try:
        for trial in range(16):
            room = f"{LOST}-{trial}"
            broker = steady
            if trial % 2:
                broker = Broker(RedisBackend(url))
                await broker.start()
            hop = rng.random() < 0.3
            got: list[Event | Reset] = []

            try:
                old = rng.randint(1, 6)
                for i in range(old):
                    await writer.append(room, message(f"old-{i}"))
                count = rng.randint(1, old + 2)
                follower = asyncio.create_task(follow_until_last(broker, room, hop, got))
                await asyncio.sleep(rng.uniform(0, 0.01))
                await observer.delete(*room_keys(room))
                await asyncio.sleep(rng.choice([0, rng.uniform(0, 0.01)]))
                new = [
                    (
                        await writer.append(
                            room, message("last" if i == count - 1 else f"new-{i}")
                        )
                    ).event
                    for i in range(count)
                ]
                try:
                    async with asyncio.timeout(10):
                        await follower
                except TimeoutError:
                    raise AssertionError(f"trial {trial}: stuck after {got}") from None
            finally:
                if broker is not steady:
                    await broker.close()

            epoch = new[0].position.epoch
            before = [d for d in got if isinstance(d, Event) and d.position.epoch != epoch]
            shape = [
                "old" if d in before else "reset" if isinstance(d, Reset) else "new"
                for d in got
            ]
            told = ["reset"] if before else []
            assert shape == ["old"] * len(before) + told + ["new"] * count, (
                f"trial {trial}: {shape} {got}"
            )
            if before:
                # what it had of the old stream, up to that stream's end
                offsets = [d.offset for d in before]
                assert offsets == list(range(offsets[0], old + 1)), f"trial {trial}: {got}"
            assert [d.position for d in got if isinstance(d, Event) and d not in before] == [
                e.position for e in new
            ], f"trial {trial}: {got}"
    finally:
        anchor.close()
        await observer.aclose()
        await steady.close()
        await writer.close()


async def test_a_retried_say_whose_stream_was_started_afresh_is_stored_anew(
    private_nodes: list[tuple[RedisBackend, Heard]], private_redis: RedisServer
) -> None:
    """The say's mark outlived its stream (only the meta hash was lost): the retry is
    not answered with whatever event of the new stream has the old offset."""
    _, (writer, _) = private_nodes
    said = Draft("message", "alice", 1764115200000, "hello", "session-a", "c-1")
    first = await writer.append(LOST, said)
    assert first.event.offset == 1

    await lose("del-meta", private_redis, LOST)
    other = (await writer.append(LOST, message("hi", user="bob"))).event
    assert other.position.epoch != first.event.position.epoch
    assert other.offset == 1

    retry = await writer.append(LOST, said)
    assert not retry.duplicate
    assert (retry.event.user, retry.event.text) == ("alice", "hello")
    assert retry.event.position == Position(other.position.epoch, 2)
    # and from now on the retry is recognised in the new stream
    again = await writer.append(LOST, said)
    assert again.duplicate
    assert again.event == retry.event


async def test_a_retry_mark_of_the_previous_version_is_still_honoured(
    private_nodes: list[tuple[RedisBackend, Heard]], private_redis: RedisServer
) -> None:
    """Marks made before they held the epoch (a bare offset) still answer a retry."""
    _, (writer, _) = private_nodes
    said = Draft("message", "alice", 1764115200000, "hello", "session-a", "c-1")
    first = await writer.append(LOST, said)
    client = aioredis.Redis.from_url(private_redis.url(0))
    try:
        mark = f"chatroom:{{{LOST}}}:said:session-a:c-1"
        assert await client.get(mark) == first.event.id.encode()
        await client.set(mark, str(first.event.offset), ex=60)
    finally:
        await client.aclose()
    retry = await writer.append(LOST, said)
    assert retry.duplicate
    assert retry.event == first.event
