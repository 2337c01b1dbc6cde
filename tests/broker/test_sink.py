"""The fan-out's fast path (Subscription.set_sink) over every backend.

A sink stands for a socket: the fan-out writes live events through it while the
consumer is parked, and the consumer writes what it is handed. Whatever the mix, the
"socket" must see every event once, in id order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from chatroom.broker import Broker, SlowConsumer, Subscription
from chatroom.broker.broker import Delivery
from chatroom.core.events import Event, Position
from tests.broker.conftest import Backends
from tests.broker.test_broker import ROOM, say, take
from tests.support import eventually, present

pytestmark = pytest.mark.asyncio


class Socket:
    """A sink standing for a client's socket: what it would receive, in order.

    It speaks the plain SSE framing, so each write's events are read back by id.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.sink_writes = 0
        self.consumer_batches = 0
        self.unsent = 0
        self.gone = False

    # --- the Sink protocol (what an asyncio transport offers)
    def write(self, data: bytes) -> None:
        self.sink_writes += 1
        for frame in data.split(b"\n\n")[:-1]:
            head, _, _ = frame.partition(b"\n")
            assert head.startswith(b"id: "), frame
            self.ids.append(head[4:].decode())

    def is_closing(self) -> bool:
        return self.gone

    def get_write_buffer_size(self) -> int:
        return self.unsent

    # --- the consumer's writes
    def consumed(self, batch: list[Delivery]) -> None:
        self.consumer_batches += 1
        self.ids.extend(d.id for d in batch if isinstance(d, Event))


# one seeded generator for every random choice here: a failure replays the same way
rng = random.Random(20261201)


def ids(events: Sequence[Event]) -> list[str]:
    return [e.id for e in events]


async def consume(sub: Subscription, socket: Socket, busy: float = 0.0) -> None:
    """The transport's consumer: writes each batch, sometimes taking a while."""
    async for batch in sub:
        socket.consumed(batch)
        if busy:
            await asyncio.sleep(rng.random() * busy)


async def say_in_bits(broker: Broker) -> list[Event]:
    """40 runs of 1 to 12 messages, said together or one by one, with pauses: some
    long enough for a consumer to catch up and park, some not."""
    said: list[Event] = []
    for _ in range(40):
        said += await say(broker, rng.randint(1, 12), together=rng.random() < 0.5)
        await asyncio.sleep(rng.choice([0.0, 0.002, 0.03]))
    return said


async def behind(broker: Broker, socket: Socket) -> tuple[Subscription, list[Event]]:
    """A subscriber with a sink, 20 events behind: they come from history, in pages."""
    await present(broker, ROOM, "alice", "s1")
    first = (await broker.say(ROOM, "alice", "s1", "first")).event
    said = await say(broker, 20)
    sub = broker.subscribe(ROOM, first.position)
    sub.set_sink(socket, "sse")
    return sub, said


async def parked(broker: Broker, socket: Socket) -> tuple[Subscription, asyncio.Task[None]]:
    """A caught-up subscriber with a sink, its consumer parked."""
    await present(broker, ROOM, "alice", "s1")
    first = (await broker.say(ROOM, "alice", "s1", "first")).event
    sub = broker.subscribe(ROOM, first.position)
    sub.set_sink(socket, "sse")
    consumer = asyncio.create_task(consume(sub, socket))
    # it reads from the backend first (a round trip on Redis), then parks
    await eventually(lambda: sub._parked, within=2.0)
    return sub, consumer


async def test_live_events_go_through_the_sink_without_waking_the_consumer(
    backends: Backends,
) -> None:
    broker = await backends.broker()
    socket = Socket()
    sub, consumer = await parked(broker, socket)
    batches_before = socket.consumer_batches
    said = await say(broker, 30, together=False)
    await eventually(lambda: len(socket.ids) == 30)
    assert socket.ids == ids(said)
    assert socket.sink_writes >= 1
    assert socket.consumer_batches == batches_before
    assert sub.cursor == said[-1].position
    sub.close()
    await consumer


async def test_sink_and_consumer_together_deliver_every_event_once_in_order(
    backends: Backends,
) -> None:
    """A consumer reading history in small pages, often busy writing, while more comes:
    events arrive by both paths, interleaved."""
    # room enough that a consumer busy for a few ms is never cut off as too slow
    broker = await backends.broker(max_pending=512, page=4)
    socket = Socket()
    sub, said = await behind(broker, socket)
    consumer = asyncio.create_task(consume(sub, socket, busy=0.003))
    said += await say_in_bits(broker)
    await eventually(lambda: len(socket.ids) >= len(said) or consumer.done())
    if consumer.done():
        consumer.result()  # raises what ended it early (a cut-off would show here)
    assert broker.stats.cut_off == 0
    assert socket.ids == ids(said)
    # both paths were taken
    assert socket.sink_writes > 0
    assert socket.consumer_batches > 1
    assert broker.stats.cut_off == 0
    sub.close()
    await consumer


async def test_a_sink_that_says_too_slow_cuts_the_subscriber_off(backends: Backends) -> None:
    broker = await backends.broker()
    socket = Socket()
    sub, consumer = await parked(broker, socket)
    written = await say(broker, 3, together=False)
    await eventually(lambda: len(socket.ids) == 3)
    socket.unsent = broker.hub.max_unsent + 1
    rest = await say(broker, 5, together=False)
    with pytest.raises(SlowConsumer, match="too slow"):
        await asyncio.wait_for(consumer, 3)
    assert broker.stats.cut_off == 1
    assert sub.reason == "slow"
    assert broker.subscribers(ROOM) == 0
    # its cursor is the last event the sink took: resuming from it misses nothing
    assert sub.cursor == written[-1].position
    async with broker.subscribe(ROOM, sub.cursor) as resumed:
        assert await take(resumed, 5) == rest


async def test_a_sink_whose_client_is_gone_ends_the_subscription_quietly(
    backends: Backends,
) -> None:
    broker = await backends.broker()
    socket = Socket()
    sub, consumer = await parked(broker, socket)
    socket.gone = True
    await broker.say(ROOM, "alice", "s1", "into the void")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(consumer, 3)
    assert sub.reason == "gone"
    assert broker.stats.cut_off == 0
    assert broker.subscribers(ROOM) == 0


async def test_a_batch_that_does_not_follow_on_never_goes_through_the_sink(
    backends: Backends,
) -> None:
    """A gap (events the listener skipped) takes the queue, which reads the backend."""
    broker = await backends.broker()
    socket = Socket()
    sub, consumer = await parked(broker, socket)
    cursor = sub.cursor
    assert cursor is not None
    ahead = Event.create(ROOM, Position(cursor.epoch, cursor.offset + 5), "message", "x", 1, "?")
    broker.hub.deliver(ROOM, [ahead])
    await asyncio.sleep(0.1)
    assert socket.sink_writes == 0
    # the consumer asked the backend, which holds no such event: nothing was written
    assert socket.ids == []
    assert sub.cursor == cursor
    # and the path is clear again for what really follows
    said = await say(broker, 2, together=False)
    await eventually(lambda: len(socket.ids) == 2)
    assert socket.ids == ids(said)
    sub.close()
    await consumer


async def test_a_burst_said_at_once_reaches_a_caught_up_socket_in_few_writes(
    backends: Backends,
) -> None:
    """say_many lets the backend store a burst together; the fan-out then writes it to
    each caught-up socket in one write per delivery (one write per event otherwise)."""
    broker = await backends.broker()
    socket = Socket()
    sub, consumer = await parked(broker, socket)
    drafts = [broker.draft("alice", "s1", f"burst {i}", f"k{i}") for i in range(50)]
    stored = await broker.say_many(ROOM, "alice", "s1", drafts)
    await eventually(lambda: len(socket.ids) == 50)
    assert socket.ids == [s.event.id for s in stored]
    assert [s.event.text for s in stored] == [f"burst {i}" for i in range(50)]
    if backends.kind != "redis":
        # memory: one delivery; sqlite: one group commit (two if the writer woke early)
        assert socket.sink_writes <= 2
    else:
        # one pipeline: the reader's XREAD takes what has landed each time it asks
        assert socket.sink_writes <= 10, socket.sink_writes
    sub.close()
    await consumer


async def test_a_sink_whose_write_fails_ends_only_that_subscription(backends: Backends) -> None:
    class Broken(Socket):
        def write(self, data: bytes) -> None:
            raise RuntimeError("the handle is closed")

    broker = await backends.broker()
    broken, healthy = Broken(), Socket()
    sub, consumer = await parked(broker, broken)
    other = broker.subscribe(ROOM, sub.cursor)
    other.set_sink(healthy, "sse")
    other_consumer = asyncio.create_task(consume(other, healthy))
    await eventually(lambda: other._parked, within=2.0)
    said = await broker.say(ROOM, "alice", "s1", "still delivered")
    with pytest.raises(ConnectionResetError, match="write failed"):
        await asyncio.wait_for(consumer, 3)
    await eventually(lambda: healthy.ids == [said.event.id])
    assert broker.stats.cut_off == 0
    other.close()
    await other_consumer


class Pump:
    """A transport that drives its subscription from callbacks (as the WebSocket does):
    no task while caught up; on_ready() starts one that polls until poll() says None."""

    def __init__(self, sub: Subscription, socket: Socket, busy: float = 0.0) -> None:
        self.sub, self.socket, self.busy = sub, socket, busy
        self.task: asyncio.Task[None] | None = None
        self.runs = 0
        self.error: BaseException | None = None
        sub.on_ready(self.ready)
        self.ready()

    def ready(self) -> None:
        if self.task is None:
            self.runs += 1
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        try:
            while (batch := await self.sub.take()) is not None:
                self.socket.consumed(batch)
                if self.busy:
                    await asyncio.sleep(rng.random() * self.busy)
        except StopAsyncIteration:
            pass
        except Exception as exc:
            self.error = exc
        finally:
            self.task = None


async def test_a_callback_driven_subscriber_gets_every_event_once_in_order(
    backends: Backends,
) -> None:
    broker = await backends.broker(max_pending=512, page=4)
    socket = Socket()
    sub, said = await behind(broker, socket)
    pump = Pump(sub, socket, busy=0.003)
    said += await say_in_bits(broker)
    await eventually(lambda: len(socket.ids) >= len(said) or pump.error is not None)
    assert pump.error is None
    assert socket.ids == ids(said)
    assert broker.stats.cut_off == 0
    # both paths were taken
    assert socket.sink_writes > 0
    assert socket.consumer_batches > 1
    # caught up, it holds no task
    await eventually(lambda: pump.task is None)
    runs = pump.runs
    sub.close()
    # closing calls it back once more, to end
    assert pump.runs == runs + 1
    await eventually(lambda: pump.task is None)
    assert pump.error is None


async def test_a_woken_callback_subscriber_is_not_cut_off_by_a_second_push(
    backends: Backends,
) -> None:
    """Two batches in one loop turn, before its pump ran: as for a parked consumer
    that iterates, the overflow is read back from the backend, not a cut-off."""
    broker = await backends.broker(max_pending=64)
    await present(broker, ROOM, "alice", "s1")
    head = (await broker.say(ROOM, "alice", "s1", "first")).event
    sub = broker.subscribe(ROOM, head.position)
    calls: list[int] = []
    sub.on_ready(lambda: calls.append(1))
    while await sub.take() is not None:
        pass
    epoch = head.position.epoch

    def events(start: int, n: int) -> list[Event]:
        return [
            Event.create(ROOM, Position(epoch, i), "message", "u", 0, "t")
            for i in range(start, start + n)
        ]

    # a gap first (it takes the queue and wakes the pump), then more than fit
    sub._push(events(head.offset + 5, 10))
    assert sub._push(events(head.offset + 15, 100))
    assert calls
    assert sub._error is None
    sub.close()
