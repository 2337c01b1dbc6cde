"""The Broker (chatroom.broker.broker) over every backend: subscribe, fan-out, presence.

`backends` is parametrized in conftest.py; each test opens its broker with the
options it needs (small presence times keep the presence tests well under 2 s).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatroom.broker import Broker, Fanout, Reset, SlowConsumer, Subscription
from chatroom.broker.backend import BackendUnavailable, Draft, Listener, Page
from chatroom.broker.broker import Delivery
from chatroom.broker.memory import MemoryBackend
from chatroom.core.events import Event, Position
from chatroom.core.presence import LeftRoom, NicknameTaken, NotMember
from chatroom.core.validation import InvalidInput
from tests.broker.conftest import Backends
from tests.support import ManualClock, eventually, present

ROOM = "lobby"
OTHER_EPOCH = "zz000000"


async def say(broker: Broker, n: int, room: str = ROOM, *, together: bool = True) -> list[Event]:
    """Say n messages as alice, a member of the room (concurrently unless told not to);
    their events in id order."""
    await present(broker, room, "alice", "s1")
    if together:
        stored = await asyncio.gather(*(broker.say(room, "alice", "s1", f"m{i}") for i in range(n)))
    else:
        stored = [await broker.say(room, "alice", "s1", f"m{i}") for i in range(n)]
    return sorted((s.event for s in stored), key=lambda e: e.offset)


async def take(sub: Subscription, n: int, within: float = 2.0) -> list[Delivery]:
    """Iterate until n events (resets not counted) arrived; fail after `within` seconds."""
    got: list[Delivery] = []

    async def run() -> None:
        while sum(isinstance(d, Event) for d in got) < n:
            got.extend(await anext(sub))

    await asyncio.wait_for(run(), within)
    return got


def events_of(deliveries: Sequence[Delivery]) -> list[Event]:
    return [d for d in deliveries if isinstance(d, Event)]


async def waiting(sub: Subscription) -> None:
    """Until the subscriber has taken all there is and waits for news."""
    await eventually(lambda: sub._waiter is not None, within=2.0)


def pending(sub: Subscription) -> int:
    """How many events wait in the subscriber's queue (its memory)."""
    return len(sub._queue)


async def stored(broker: Broker, room: str = ROOM) -> list[tuple[str, str]]:
    page = await broker.backend.read_after(room, None, 1000)
    return [(e.type, e.user) for e in page.events]


# --- subscribe -----------------------------------------------------------------------------


async def test_no_cursor_gets_the_last_50_then_live(backends: Backends) -> None:
    broker = await backends.broker()
    said = await say(broker, 60)
    async with broker.subscribe(ROOM) as sub:
        assert await anext(sub) == said[-50:]
        assert sub.cursor == said[-1].position
        await present(broker, ROOM, "bob", "s2")
        live = (await broker.say(ROOM, "bob", "s2", "live")).event
        assert await take(sub, 1) == [live]


async def test_no_cursor_in_an_empty_room_gets_live_events(backends: Backends) -> None:
    broker = await backends.broker()
    async with broker.subscribe(ROOM) as sub:
        first = asyncio.create_task(take(sub, 3))
        await waiting(sub)
        said = await say(broker, 3, together=False)
        assert await first == said


async def test_resuming_from_a_cursor_has_no_gap_and_no_duplicate(backends: Backends) -> None:
    broker = await backends.broker(page=4)
    said = await say(broker, 10)
    sub = broker.subscribe(ROOM, said[3].position)
    # published after subscribing, before the first read: queued and in the backend
    more = await say(broker, 5)
    async with sub:
        got = await take(sub, 11)
        assert got == said[4:] + more
        # and what comes while it reads along
        consumer = asyncio.create_task(take(sub, 20))
        later = await say(broker, 20, together=False)
        assert await consumer == later
    assert sub.cursor == later[-1].position


async def test_resuming_at_the_head_gets_only_what_comes_next(backends: Backends) -> None:
    broker = await backends.broker()
    said = await say(broker, 3)
    async with broker.subscribe(ROOM, said[-1].position) as sub:
        consumer = asyncio.create_task(take(sub, 1))
        await waiting(sub)
        assert not consumer.done()
        await present(broker, ROOM, "bob", "s2")
        nxt = (await broker.say(ROOM, "bob", "s2", "next")).event
        assert await consumer == [nxt]


@pytest.mark.parametrize("cursor", ["other-epoch", "trimmed", "beyond-head"])
async def test_reset_comes_first_when_the_cursor_is_unknown(
    backends: Backends, cursor: str
) -> None:
    broker = await backends.broker(retention=5)
    said = await say(broker, 12, together=False)
    retained = said[-5:]
    epoch = said[0].position.epoch
    position = {
        "other-epoch": Position(OTHER_EPOCH, 10),
        "trimmed": Position(epoch, 2),
        "beyond-head": Position(epoch, 40),
    }[cursor]
    async with broker.subscribe(ROOM, position) as sub:
        got = await take(sub, 5)
        reset = got[0]
        assert isinstance(reset, Reset)
        assert reset.oldest == retained[0].position
        assert reset.id is None  # nothing to resume from
        assert orjson.loads(reset.data) == {"type": "reset", "id": retained[0].id}
        assert got[1:] == retained
        await present(broker, ROOM, "bob", "s2")
        live = (await broker.say(ROOM, "bob", "s2", "after the reset")).event
        assert await take(sub, 1) == [live]


async def test_a_cursor_into_an_empty_room_is_reset_then_live(backends: Backends) -> None:
    broker = await backends.broker()
    async with broker.subscribe(ROOM, Position(OTHER_EPOCH, 7)) as sub:
        got = await anext(sub)
        assert len(got) == 1
        assert isinstance(got[0], Reset)
        assert got[0].oldest is None
        consumer = asyncio.create_task(take(sub, 2))
        await waiting(sub)
        said = await say(broker, 2, together=False)
        assert await consumer == said


async def test_concurrent_publishes_reach_every_subscriber_in_id_order(
    backends: Backends,
) -> None:
    broker = await backends.broker()
    said = await say(broker, 5)
    subs = [
        broker.subscribe(ROOM),
        broker.subscribe(ROOM, said[-1].position),
        broker.subscribe(ROOM, Position(said[0].position.epoch, 0)),
    ]
    wanted = (205, 200, 205)
    consumers = [asyncio.create_task(take(s, n)) for s, n in zip(subs, wanted, strict=True)]
    for sub in subs:
        await waiting(sub)
    for i in range(7):
        await present(broker, ROOM, f"user{i}", f"s{i}")
    results = await asyncio.gather(
        *(broker.say(ROOM, f"user{i % 7}", f"s{i % 7}", f"m{i}") for i in range(200))
    )
    everything = said + sorted((r.event for r in results), key=lambda e: e.offset)
    assert [e.offset for e in everything] == list(range(1, 206))
    got = [await c for c in consumers]
    assert got[0] == everything
    assert got[1] == everything[5:]
    assert got[2] == everything
    for sub in subs:
        sub.close()
    assert broker.subscribers(ROOM) == 0


# --- the room never waits for a client -----------------------------------------------


async def test_a_stalled_subscriber_is_cut_off_and_no_one_waits_for_it(
    backends: Backends,
) -> None:
    max_pending = 32
    broker = await backends.broker(max_pending=max_pending)
    await present(broker, ROOM, "alice", "s1")
    first = (await broker.say(ROOM, "alice", "s1", "first")).event
    stalled = broker.subscribe(ROOM)
    assert await anext(stalled) == [first]  # it read its history, then its socket stalls
    active = broker.subscribe(ROOM)
    assert await anext(active) == [first]
    # One more event, which the stalled one holds unread. (Without it, a backend that
    # hands the first of the flood over in one batch larger than max_pending, as Redis
    # may when a room joins its read, finds the stalled one holding nothing: not behind
    # but to read from the backend when it wakes, costing nothing meanwhile.)
    warm = (await broker.say(ROOM, "alice", "s1", "warm")).event
    assert await anext(active) == [warm]
    consumer = asyncio.create_task(take(active, 2000, within=20))

    said: list[Event] = []
    slowest = 0.0
    async with asyncio.timeout(15):  # a say that waited on the stalled one never returns
        for chunk in range(100):
            started = time.perf_counter()
            said += await say(broker, 20)
            slowest = max(slowest, time.perf_counter() - started)
            # memory per subscriber is bounded, whatever the stalled one does
            assert pending(stalled) <= max_pending, f"after chunk {chunk}"
            assert pending(active) <= max_pending, f"after chunk {chunk}"
    assert slowest < 1.0, "a say waited on a subscriber"

    assert await consumer == said
    with pytest.raises(SlowConsumer, match="too slow"):
        await anext(stalled)
    with pytest.raises(SlowConsumer):
        await anext(stalled)  # it stays cut off
    assert pending(stalled) == 0
    assert broker.stats.cut_off == 1
    assert broker.subscribers(ROOM) == 1

    # it can resume from its cursor and miss nothing
    assert stalled.cursor == first.position
    async with broker.subscribe(ROOM, stalled.cursor) as resumed:
        assert await take(resumed, 2001) == [warm, *said]
    active.close()


async def test_a_subscription_not_yet_read_holds_nothing_and_catches_up(
    backends: Backends,
) -> None:
    broker = await backends.broker(max_pending=8, page=64)
    await present(broker, ROOM, "alice", "s1")
    first = (await broker.say(ROOM, "alice", "s1", "first")).event
    sub = broker.subscribe(ROOM, first.position)
    said: list[Event] = []
    for _ in range(30):
        said += await say(broker, 10)
        assert pending(sub) <= 8
    async with sub:
        got = await take(sub, 300)
    assert got == said  # from the backend, in pages, no reset, no cut-off


async def test_a_waiting_subscriber_is_not_cut_off_by_a_burst(backends: Backends) -> None:
    """SQLite answers says that arrive together with one commit and one delivery, so a
    burst can hand more than max_pending events at once to a subscriber that is idle,
    waiting for news. It is not behind; it must not be cut off."""
    broker = await backends.broker(max_pending=8)
    await present(broker, ROOM, "alice", "s1")
    first = (await broker.say(ROOM, "alice", "s1", "first")).event
    async with broker.subscribe(ROOM, first.position) as sub:
        consumer = asyncio.create_task(take(sub, 100))
        await waiting(sub)
        said = await say(broker, 100)
        assert await consumer == said
    assert broker.stats.cut_off == 0


class GroupCommit(MemoryBackend):
    """Memory, but the listener gets every event stored since the last flush() in one
    call, as SQLite's group commit delivers them."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Event] = []
        self.deliver: Listener | None = None

    def set_listener(self, listener: Listener) -> None:
        self.deliver = listener
        super().set_listener(lambda room, events: self.held.extend(events))

    def flush(self, room: str) -> None:
        events, self.held = self.held, []
        assert self.deliver is not None
        self.deliver(room, events)


@pytest.mark.parametrize("history", [True, False], ids=["after-history", "empty-room"])
async def test_a_burst_larger_than_the_bound_reaches_a_waiting_subscriber_whole(
    history: bool,
) -> None:
    backend = GroupCommit()
    broker = Broker(backend, fanout=Fanout(max_pending=4, page=3))
    await broker.start()
    try:
        before: list[Event] = []
        if history:
            await present(broker, ROOM, "alice", "s1")
            before = [(await broker.say(ROOM, "alice", "s1", "first")).event]
            backend.flush(ROOM)
        async with broker.subscribe(ROOM) as sub:
            if history:
                assert await anext(sub) == before
            consumer = asyncio.create_task(take(sub, 10, within=1))
            await waiting(sub)
            await present(broker, ROOM, "bob", "s2")
            said = [(await broker.say(ROOM, "bob", "s2", f"m{i}")).event for i in range(10)]
            backend.flush(ROOM)  # ten at once, to a subscriber waiting for news
            assert events_of(await consumer) == said
    finally:
        await broker.close()


class HeldReads(MemoryBackend):
    """Memory, but while `gate` is set a read's answer is held back after the read was
    made: as on the SQLite thread, where a read can finish before a commit whose events
    the loop delivers before it hands the read's answer to the subscriber."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def read_after(self, room: str, cursor: Position | None, limit: int) -> Page:
        page = await super().read_after(room, cursor, limit)
        gate = self.gate
        if gate is not None:
            self.reading.set()
            await gate.wait()
        return page


async def test_events_dropped_from_the_queue_during_a_read_are_read_after_it() -> None:
    backend = HeldReads()
    broker = Broker(backend, fanout=Fanout(max_pending=4))
    await broker.start()
    try:
        await present(broker, ROOM, "alice", "s1")
        first = (await broker.say(ROOM, "alice", "s1", "first")).event
        async with broker.subscribe(ROOM, first.position) as sub:
            backend.gate = gate = asyncio.Event()
            consumer = asyncio.create_task(take(sub, 10, within=1))
            await backend.reading.wait()  # the read is made; its answer is not back yet
            await present(broker, ROOM, "bob", "s2")
            said = [(await broker.say(ROOM, "bob", "s2", f"m{i}")).event for i in range(10)]
            backend.gate = None
            gate.set()
            # nothing more is said: the ten must come without a further publish
            assert events_of(await consumer) == said
    finally:
        await broker.close()


# --- presence -------------------------------------------------------------------------------


class Timings(TypedDict):
    presence_ttl: float
    linger: float
    reap_interval: float


# Presence on a clock the test moves (ManualClock): the reaper and the heartbeat loops
# do not come round within a test (an hour, and 10 s, apart); the test runs their
# rounds itself (broker.presence.reap(), .beat()) when it wants them.
TTL = 30.0
LINGER = 5.0
STILL = Timings(presence_ttl=TTL, linger=LINGER, reap_interval=3600.0)


async def on_clock(backends: Backends) -> tuple[Broker, ManualClock]:
    clock = ManualClock()
    return await backends.broker(presence_clock=clock, **STILL), clock


async def test_the_heartbeat_and_the_reaper_come_round_on_their_own(
    backends: Backends,
) -> None:
    """The one presence test on real time: the loops run beat() and reap() by
    themselves. A socket outlives three ttls by its heartbeat; closed, it is reported
    gone after its linger."""
    broker = await backends.broker(presence_ttl=0.3, linger=0.1, reap_interval=0.05)
    touches = 0
    touch = broker.backend.presence.touch

    async def counted(*args: Any, **kwargs: Any) -> bool:
        nonlocal touches
        touches += 1
        return await touch(*args, **kwargs)

    broker.backend.presence.touch = counted  # type: ignore[method-assign]
    await broker.connect(ROOM, "alice", "s1", "tab")
    await eventually(lambda: touches >= 10, within=5)  # 9 beats: three ttls
    assert await broker.members(ROOM) == ["alice"]
    assert await stored(broker) == [("join", "alice")]
    await broker.disconnect("tab")

    async def left() -> bool:
        return await stored(broker) == [("join", "alice"), ("leave", "alice")]

    await eventually(left, within=2)
    assert await broker.members(ROOM) == []


async def test_join_on_first_connection_only(backends: Backends) -> None:
    broker, _ = await on_clock(backends)
    await broker.connect(ROOM, "alice", "s1", "tab1")
    await broker.connect(ROOM, "alice", "s1", "tab2")  # a second tab
    await broker.keep_present(ROOM, "alice", "s1")  # and a poller of the same session
    await broker.connect(ROOM, "bob", "s2", "tab3")
    await broker.keep_present(ROOM, "bob", "s2")
    assert await stored(broker) == [("join", "alice"), ("join", "bob")]
    assert await broker.members(ROOM) == ["alice", "bob"]
    assert await broker.rooms() == [(ROOM, 2)]


async def test_leave_after_the_last_connection_and_the_linger(backends: Backends) -> None:
    broker, clock = await on_clock(backends)
    await broker.connect(ROOM, "alice", "s1", "tab1")
    await broker.connect(ROOM, "alice", "s1", "tab2")
    await broker.disconnect("tab1")
    # longer than the ttl: the heartbeat keeps tab2 present
    for _ in range(3):
        clock.advance(TTL / 2)
        await broker.presence.beat()
        await broker.presence.reap()
    assert await stored(broker) == [("join", "alice")]
    assert await broker.members(ROOM) == ["alice"]

    await broker.disconnect("tab2")
    clock.advance(LINGER - 1)
    await broker.presence.reap()
    assert await broker.members(ROOM) == ["alice"]  # lingering: a reload is no leave
    assert await stored(broker) == [("join", "alice")]
    clock.advance(1)
    await broker.presence.reap()
    assert await stored(broker) == [("join", "alice"), ("leave", "alice")]
    assert await broker.members(ROOM) == []
    assert await broker.rooms() == [(ROOM, 0)]
    await broker.disconnect("tab2")  # twice is harmless
    clock.advance(TTL)
    await broker.presence.beat()
    await broker.presence.reap()
    assert await stored(broker) == [("join", "alice"), ("leave", "alice")]


async def test_rooms_lists_live_and_recent_rooms_busiest_first(backends: Backends) -> None:
    now = [1_764_115_200.0]
    broker = await backends.broker(room_idle=600.0, wall_clock=lambda: now[0])

    async def store(room: str, text: str) -> None:
        # history without a member: what a room keeps after everyone went
        draft = Draft("message", "alice", int(now[0] * 1000), text, "s1")
        await broker.backend.append(room, draft)

    await store("old", "long ago")
    now[0] += 500
    await store("recent", "a while ago")
    await broker.connect("busy", "bob", "s2", "tab-b")
    await broker.connect("busy", "carol", "s3", "tab-c")
    await broker.connect("quiet", "dave", "s4", "tab-d")
    assert await broker.rooms() == [("busy", 2), ("quiet", 1), ("old", 0), ("recent", 0)]
    now[0] += 101  # "old" is 601 s without news and without members
    assert await broker.rooms() == [("busy", 2), ("quiet", 1), ("recent", 0)]
    # it keeps its history
    assert [e.text for e in await broker.history("old", None, 10)] == ["long ago"]
    # a member keeps a room listed whatever its last event's age
    now[0] += 10_000
    assert await broker.rooms() == [("busy", 2), ("quiet", 1)]
    await store("old", "back")
    assert await broker.rooms() == [("busy", 2), ("quiet", 1), ("old", 0)]
    # pages: `after` is the (members, name) the previous page ended with
    assert await broker.rooms(limit=2) == [("busy", 2), ("quiet", 1)]
    assert await broker.rooms(limit=2, after=(1, "quiet")) == [("old", 0)]
    assert await broker.rooms(limit=1, after=(2, "busy")) == [("quiet", 1)]
    assert await broker.rooms(after=(0, "old")) == []
    assert await broker.rooms(limit=5, after=(1, "a")) == [("quiet", 1), ("old", 0)]


async def test_a_reconnect_within_the_linger_is_neither_leave_nor_join(
    backends: Backends,
) -> None:
    broker, clock = await on_clock(backends)
    await broker.connect(ROOM, "alice", "s1", "tab1")
    await broker.disconnect("tab1")
    clock.advance(LINGER / 2)
    await broker.connect(ROOM, "alice", "s1", "tab1-reloaded")
    clock.advance(LINGER)  # past the linger of the closed one
    await broker.presence.reap()
    assert await stored(broker) == [("join", "alice")]
    assert await broker.members(ROOM) == ["alice"]


async def test_a_poller_leaves_when_it_stops_polling(backends: Backends) -> None:
    broker, clock = await on_clock(backends)
    await broker.keep_present(ROOM, "alice", "s1")
    clock.advance(TTL / 2)
    await broker.keep_present(ROOM, "alice", "s1")  # keeps it present a ttl from now
    clock.advance(TTL - 1)  # past the first poll's ttl
    await broker.presence.reap()
    assert await broker.members(ROOM) == ["alice"]
    assert await stored(broker) == [("join", "alice")]
    clock.advance(1)
    await broker.presence.reap()
    assert await stored(broker) == [("join", "alice"), ("leave", "alice")]


async def test_a_nickname_is_refused_to_another_session(backends: Backends) -> None:
    broker, _ = await on_clock(backends)
    await broker.claim(ROOM, "alice", "s1")
    with pytest.raises(NicknameTaken, match="alice"):
        await broker.claim(ROOM, "alice", "s2")
    with pytest.raises(NicknameTaken):
        await broker.connect(ROOM, "alice", "s2", "c2")
    with pytest.raises(NicknameTaken):
        await broker.check(ROOM, "alice", "s2")
    with pytest.raises(NicknameTaken):
        await broker.keep_present(ROOM, "alice", "s2")
    await broker.claim(ROOM, "alice", "s1")  # its own session may come back
    await broker.claim("kitchen", "alice", "s2")  # another room is another namespace
    assert await stored(broker) == [("join", "alice")]
    assert await broker.members(ROOM) == ["alice"]


async def test_leave_ends_the_member_and_its_subscriptions_in_that_room(
    backends: Backends,
) -> None:
    broker, _ = await on_clock(backends)
    await broker.connect(ROOM, "alice", "s1", "a1")
    await broker.connect(ROOM, "bob", "s2", "b1")
    await broker.connect("kitchen", "alice", "s1", "a2")
    hers = broker.subscribe(ROOM, session="s1")
    his = broker.subscribe(ROOM, session="s2")
    elsewhere = broker.subscribe("kitchen", session="s1")
    for sub in (hers, his, elsewhere):
        await anext(sub)

    await broker.leave(ROOM, "alice", "s1")
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(hers), 1)
    got = await take(his, 1)
    assert [(e.type, e.user) for e in events_of(got)] == [("leave", "alice")]
    assert await broker.members(ROOM) == ["bob"]
    assert await broker.members("kitchen") == ["alice"]

    await broker.leave(ROOM, "alice", "s1")  # a second press stores nothing
    await broker.leave(ROOM, "bob", "s1")  # nor does someone else's session
    await broker.disconnect("a1")
    assert await stored(broker) == [("join", "alice"), ("join", "bob"), ("leave", "alice")]
    assert await broker.members(ROOM) == ["bob"]
    said = (await broker.say("kitchen", "alice", "s1", "still here")).event
    assert await take(elsewhere, 1) == [said]
    his.close()
    elsewhere.close()


async def test_after_leave_a_socket_still_open_does_not_bring_the_member_back(
    backends: Backends,
) -> None:
    """The leave button on a page whose socket closes a moment later: the heartbeat
    in between must not make the member present again (silently, then a second leave)."""
    broker, clock = await on_clock(backends)
    await broker.connect(ROOM, "alice", "s1", "tab")
    await broker.leave(ROOM, "alice", "s1")
    await broker.presence.beat()  # a heartbeat comes before the socket's handler ends
    assert await broker.members(ROOM) == []
    await broker.disconnect("tab")
    clock.advance(LINGER)  # past the linger and a reaping
    await broker.presence.reap()
    assert await stored(broker) == [("join", "alice"), ("leave", "alice")]
    assert await broker.members(ROOM) == []


async def test_only_a_member_of_the_room_may_speak_there(backends: Backends) -> None:
    broker, clock = await on_clock(backends)
    drafts = [broker.draft("alice", "s1", "hi")]
    with pytest.raises(NotMember, match="welcome page"):
        await broker.say(ROOM, "alice", "s1", "hi")  # never entered: no join, no presence
    with pytest.raises(NotMember):
        await broker.say_many(ROOM, "alice", "s1", drafts)
    await broker.claim("kitchen", "alice", "s1")
    with pytest.raises(NotMember):
        await broker.say(ROOM, "alice", "s1", "hi")  # a member of another room only
    assert await stored(broker) == []
    assert await broker.members(ROOM) == []

    await broker.claim(ROOM, "alice", "s1")
    said = (await broker.say(ROOM, "alice", "s1", "hi")).event
    more = await broker.say_many(ROOM, "alice", "s1", drafts)
    assert await stored(broker) == [("join", "alice"), ("message", "alice"), ("message", "alice")]
    assert [said.text, more[0].event.text] == ["hi", "hi"]
    # someone else's name: taken while she is live
    with pytest.raises(NicknameTaken):
        await broker.say(ROOM, "alice", "s2", "me too")

    # her presence ran out (no poll, no socket): she may not speak until she is back
    before = await stored(broker)
    clock.advance(TTL)
    await broker.presence.reap()
    assert await stored(broker) == [*before, ("leave", "alice")]
    with pytest.raises(NotMember):
        await broker.say(ROOM, "alice", "s1", "still here?")
    await broker.keep_present(ROOM, "alice", "s1")
    await broker.say(ROOM, "alice", "s1", "back")

    # after Leave, she is told she left (not merely that she is no member)
    await broker.leave(ROOM, "alice", "s1")
    with pytest.raises(LeftRoom):
        await broker.say(ROOM, "alice", "s1", "gone")
    with pytest.raises(LeftRoom):
        await broker.say_many(ROOM, "alice", "s1", drafts)


async def test_another_session_of_the_same_name_cannot_undo_a_leave(
    backends: Backends,
) -> None:
    """A session that got the same nickname in another room (/demo) posts Leave to the
    room of the one that left: nothing is stored, and the one that left stays out."""
    broker, _ = await on_clock(backends)
    await broker.claim(ROOM, "alice", "s1")
    await broker.leave(ROOM, "alice", "s1")
    await broker.claim("kitchen", "alice", "s2")
    await broker.leave(ROOM, "alice", "s2")
    assert await stored(broker) == [("join", "alice"), ("leave", "alice")]
    with pytest.raises(LeftRoom):
        await broker.keep_present(ROOM, "alice", "s1")
    with pytest.raises(LeftRoom):
        await broker.connect(ROOM, "alice", "s1", "tab")
    with pytest.raises(LeftRoom):
        await broker.say(ROOM, "alice", "s1", "back without the welcome page")
    assert await broker.members("kitchen") == ["alice"]  # s2's own presence is its own
    await broker.claim(ROOM, "alice", "s1")  # the welcome page lets her in again
    await broker.say(ROOM, "alice", "s1", "back")
    assert await stored(broker) == [
        ("join", "alice"), ("leave", "alice"), ("join", "alice"), ("message", "alice"),
    ]


async def test_a_look_alike_of_a_live_nickname_is_refused(backends: Backends) -> None:
    broker, _ = await on_clock(backends)
    await broker.claim(ROOM, "victim", "s1")
    for i, other in enumerate(["Victim", "v\u0456ctim", "\uff56\uff49\uff43\uff54\uff49\uff4d"]):
        with pytest.raises(NicknameTaken):
            await broker.claim(ROOM, other, f"other{i}")
        with pytest.raises(NicknameTaken):
            await broker.connect(ROOM, other, f"other{i}", f"tab{i}")
        with pytest.raises(NicknameTaken):
            await broker.say(ROOM, other, f"other{i}", "it is me")
        await broker.leave(ROOM, other, f"other{i}")  # removes no one, stores nothing
    assert await stored(broker) == [("join", "victim")]
    assert await broker.members(ROOM) == ["victim"]
    await broker.say(ROOM, "victim", "s1", "still me")


async def test_close_ends_every_subscription(backends: Backends) -> None:
    broker = await backends.broker()
    await say(broker, 3)
    subs = [
        broker.subscribe(ROOM),
        broker.subscribe("kitchen"),
        broker.subscribe(ROOM, Position(OTHER_EPOCH, 1)),
    ]

    async def drain(sub: Subscription) -> int:
        return sum([len(batch) async for batch in sub])

    drains = [asyncio.create_task(drain(sub)) for sub in subs]
    for sub in subs:
        await waiting(sub)
    assert not any(d.done() for d in drains)
    await broker.close()
    counts = await asyncio.wait_for(asyncio.gather(*drains), 1)
    assert counts == [3, 0, 4]
    assert broker.subscribers() == 0
    late = broker.subscribe(ROOM)
    with pytest.raises(StopAsyncIteration):
        await anext(late)


# --- say -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "client_id", "field_name"),
    [
        ("", None, "text"),
        ("   \n", None, "text"),
        ("x" * 2001, None, "text"),
        (None, None, "text"),
        (42, None, "text"),
        (b"bytes", None, "text"),
        (["a list"], None, "text"),
        ("nul\x00", None, "text"),
        ("lone \ud800 surrogate", None, "text"),
        ("fine", "", "client_id"),
        ("fine", "x" * 65, "client_id"),
        ("fine", 7, "client_id"),
        ("fine", ["k"], "client_id"),
    ],
)
async def test_say_refuses_bad_input_and_stores_nothing(
    backends: Backends, text: object, client_id: object, field_name: str
) -> None:
    broker = await backends.broker()
    async with broker.subscribe(ROOM) as sub:
        watcher = asyncio.create_task(take(sub, 1))
        await waiting(sub)
        with pytest.raises(InvalidInput) as caught:
            await broker.say(ROOM, "alice", "s1", text, client_id)
        assert caught.value.field == field_name
        assert await broker.backend.rooms() == []
        assert broker.stats.published == 0
        assert not watcher.done()
        # and the room carries on: the next good say is event 1
        await present(broker, ROOM, "alice", "s1")
        good = (await broker.say(ROOM, "alice", "s1", "fine", "k" * 64)).event
        assert good.offset == 1
        assert await watcher == [good]


async def test_say_trims_and_is_idempotent_per_client_id(backends: Backends) -> None:
    broker = await backends.broker()
    async with broker.subscribe(ROOM) as sub:
        watcher = asyncio.create_task(take(sub, 2))
        await waiting(sub)
        await present(broker, ROOM, "alice", "s1")
        first = await broker.say(ROOM, "alice", "s1", "  hello  ", "c-1")
        retry = await broker.say(ROOM, "alice", "s1", "hello", "c-1")
        other = await broker.say(ROOM, "alice", "s1", "hello", "c-2")
        assert first.event.text == "hello"
        assert not first.duplicate
        assert retry.duplicate
        assert retry.event == first.event
        assert other.event.offset == 2
        assert await watcher == [first.event, other.event]
    assert broker.stats.published == 2


# --- property: any interleaving, any cursor ---------------------------------------------------


@dataclass
class Segment:
    """One connection of a client: from which cursor, what was stored then, what came."""

    cursor: Position | None
    head: int
    deliveries: list[Delivery] = field(default_factory=list)


@dataclass
class Client:
    cursor: Position | None
    segments: list[Segment] = field(default_factory=list)

    def events(self) -> list[Event]:
        return [e for s in self.segments for e in events_of(s.deliveries)]

    def position(self, epoch: str | None) -> int | None:
        """The offset this client has everything up to, as far as it can tell."""
        at: int | None = None
        for segment in self.segments:
            events = events_of(segment.deliveries)
            if events:
                at = events[-1].offset
            elif segment.deliveries:  # only a reset
                at = None
            elif segment.cursor is not None and segment.cursor.epoch == epoch:
                at = segment.cursor.offset  # nothing yet after its cursor
        return at


@dataclass
class World:
    room: str
    epoch: str | None = None
    said: dict[int, Event] = field(default_factory=dict)

    @property
    def head(self) -> int:
        return max(self.said, default=0)


ARCHIVE = 5
RETENTION = 25
_rooms = itertools.count()


@pytest.fixture(params=[3, 64], ids=lambda n: f"max_pending={n}")
async def prop_broker(backends: Backends, request: pytest.FixtureRequest) -> Broker:
    n: int = request.param
    return await backends.broker(retention=RETENTION, archive=ARCHIVE, page=4, max_pending=n)


async def run_client(broker: Broker, world: World, client: Client) -> None:
    """A client as a browser runs it: cut off, it resumes from the last id it got."""
    cursor = client.cursor
    while True:
        segment = Segment(cursor, world.head)
        client.segments.append(segment)
        try:
            async with broker.subscribe(world.room, cursor) as sub:
                async for batch in sub:
                    segment.deliveries.extend(batch)
        except SlowConsumer:
            events = client.events()
            cursor = events[-1].position if events else cursor
            continue
        return


def check_segment(world: World, segment: Segment) -> None:
    """Each event is the one after the client's position; a reset only when that position
    could not be honoured (another epoch, trimmed away, beyond the head), and then the
    events start at the oldest retained one."""
    epoch = world.epoch
    assert epoch is not None
    # what the client has everything up to; None: nothing yet, from the archive
    position = segment.cursor
    for delivery in segment.deliveries:
        if isinstance(delivery, Reset):
            assert position is not None, "a reset without a cursor"
            oldest = delivery.oldest
            honourable = (
                position.epoch == epoch
                and oldest is not None
                and oldest.offset - 1 <= position.offset <= segment.head
            )
            assert not honourable, f"reset although {position} could be honoured"
            # next comes the oldest retained event, or the first of a room that was empty
            position = Position(epoch, oldest.offset - 1 if oldest is not None else 0)
            continue
        event = delivery
        assert event == world.said[event.offset]
        if position is None:
            # the archive: no older than the last ARCHIVE when it connected
            assert event.offset >= segment.head - ARCHIVE + 1
        else:
            assert position.epoch == epoch, f"events after {position} without a reset"
            assert event.offset == position.offset + 1, f"after {position}: {event.id}"
        position = event.position


def draw_cursor(data: st.DataObject, world: World) -> Position | None:
    head = world.head
    oldest = max(1, head - RETENTION + 1)
    epoch = world.epoch or OTHER_EPOCH
    choice = data.draw(st.sampled_from(["none", "retained", "trimmed", "beyond", "other"]))
    if choice == "none":
        return None
    if choice == "retained" or (choice == "trimmed" and oldest < 2):
        return Position(epoch, data.draw(st.integers(max(0, oldest - 1), head)))
    if choice == "trimmed":
        return Position(epoch, data.draw(st.integers(0, oldest - 2)))
    if choice == "beyond":
        return Position(epoch, head + data.draw(st.integers(1, 5)))
    return Position(OTHER_EPOCH, data.draw(st.integers(0, head + 2)))


@settings(
    max_examples=12,
    deadline=None,
    # one broker for the whole test; each example has a room of its own
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_any_interleaving_delivers_exactly_what_follows_each_cursor(
    prop_broker: Broker, data: st.DataObject
) -> None:
    broker = prop_broker
    world = World(f"prop{next(_rooms)}")
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = []

    async def publish(n: int, together: bool) -> None:
        for event in await say(broker, n, world.room, together=together):
            world.said[event.offset] = event
            world.epoch = event.position.epoch

    await publish(data.draw(st.integers(0, 40), label="history"), True)
    for _ in range(data.draw(st.integers(1, 10), label="steps")):
        step = data.draw(st.sampled_from(["publish", "subscribe", "yield"]))
        if step == "publish":
            await publish(data.draw(st.integers(1, 6)), data.draw(st.booleans()))
        elif step == "subscribe":
            client = Client(draw_cursor(data, world))
            clients.append(client)
            tasks.append(asyncio.create_task(run_client(broker, world, client)))
        else:
            for _ in range(data.draw(st.integers(1, 4))):
                await asyncio.sleep(0)
    await publish(1, False)  # so every client has something to reach

    try:
        await eventually(
            lambda: all(c.position(world.epoch) == world.head for c in clients), within=3
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    for client in clients:
        for segment in client.segments:
            check_segment(world, segment)


async def test_a_read_failing_because_the_broker_closed_ends_the_subscription_quietly(
    backends: Backends,
) -> None:
    """Shutdown closes the backend under a subscriber whose history read is still out;
    that read then fails (Redis: the pool's sockets are closed). The subscription was
    told to end: it ends, it does not raise the backend's error."""
    broker = await backends.broker()
    backend = broker.backend
    started = asyncio.Event()
    release = asyncio.Event()
    real = backend.read_after

    async def slow_read(room: str, cursor: Position | None, limit: int) -> Page:
        started.set()
        await release.wait()
        raise BackendUnavailable("the connection was closed under this read")

    backend.read_after = slow_read  # type: ignore[method-assign]
    sub = broker.subscribe(ROOM)
    reader = asyncio.create_task(anext(sub))
    await asyncio.wait_for(started.wait(), 2)
    sub.close("shutdown")
    release.set()
    with pytest.raises(StopAsyncIteration):
        await reader
    backend.read_after = real  # type: ignore[method-assign]
    # an open subscription still reports the failure: the client must learn of it
    other = broker.subscribe(ROOM)
    backend.read_after = slow_read  # type: ignore[method-assign]
    release.set()
    with pytest.raises(BackendUnavailable):
        await anext(other)
    backend.read_after = real  # type: ignore[method-assign]
    other.close()
