"""The Backend contract (chatroom.broker.backend), one suite run against every backend.

`backends` is parametrized in conftest.py over BACKENDS. What only one backend has
(SQLite's file, Redis's keys) is tested beside it: test_sqlite.py, test_redis.py.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatroom.broker import open_backend
from chatroom.broker.backend import Draft, Stored
from chatroom.core.events import Event, EventType, Position, parse_cursor
from chatroom.core.presence import LeftRoom, NicknameTaken, NotMember
from tests.broker.conftest import Backends
from tests.broker.helpers import ROOM, TS, fill, msg, offsets
from tests.support import ManualClock, eventually

# --- append ---------------------------------------------------------------------------


# Texts and names JSON may write in more than one way: quotes, backslashes, control
# characters, "/", non-ASCII, astral emoji, lone-surrogate-free Unicode of every plane.
_texts = st.text(
    alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40
) | st.sampled_from(['"', "\\", "/", "\u2028", "\x7f", "\x00", "😀", "a\nb", "\u202e"])


@settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_an_event_s_bytes_are_the_ones_core_makes(
    backends: Backends, data: st.DataObject
) -> None:
    """A second copy of the wire format may exist in a backend (Redis splices the id in
    Lua): it must give the very bytes core.events gives, and read them back unchanged."""
    backend = await backends.start()
    kind: EventType = data.draw(st.sampled_from(["message", "join", "leave"]))
    user = data.draw(_texts)
    text = data.draw(_texts) if kind == "message" else None
    timestamp = data.draw(st.integers(0, 2**53))
    room = data.draw(st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True))
    stored = await backend.append(room, Draft(kind, user, timestamp, text, "s1"))
    event = stored.event
    assert event.data == Event.create(room, event.position, kind, user, timestamp, text).data
    page = await backend.read_after(room, None, 1)
    assert [e.data for e in page.events] == [event.data]


async def test_offsets_start_at_one_and_grow_by_one(backends: Backends) -> None:
    backend = await backends.start()
    stored = [await backend.append(ROOM, msg(f"m{i}")) for i in range(5)]
    assert [s.event.offset for s in stored] == [1, 2, 3, 4, 5]
    assert not any(s.duplicate for s in stored)
    assert len({s.event.position.epoch for s in stored}) == 1
    event = stored[2].event
    assert (event.room, event.type, event.user, event.text, event.timestamp) == (
        ROOM,
        "message",
        "alice",
        "m2",
        TS,
    )
    assert parse_cursor(event.id) == event.position


async def test_ids_strictly_increase_under_concurrent_appends(backends: Backends) -> None:
    backend = await backends.start()
    drafts = [msg(f"m{i}") if i % 3 else msg("", kind="join", user=f"u{i}") for i in range(60)]
    results = await asyncio.gather(*(backend.append(ROOM, d) for d in drafts))
    positions = sorted(r.event.position for r in results)
    assert [p.offset for p in positions] == list(range(1, 61))
    page = await backend.read_after(ROOM, None, 100)
    stored = [e.position for e in page.events]
    assert stored == positions
    assert all(a < b for a, b in itertools.pairwise(stored))
    # ids compare as the server compares them
    ids = [parse_cursor(e.id) for e in page.events]
    assert ids == positions


async def test_rooms_are_separate_streams(backends: Backends) -> None:
    backend = await backends.start()
    a = await fill(backend, 3, "a")
    b = await fill(backend, 2, "b")
    assert offsets(a) == [1, 2, 3]
    assert offsets(b) == [1, 2]
    assert (await backend.read_after("a", None, 10)).events == a
    assert (await backend.read_after("b", None, 10)).events == b


async def test_stored_events_read_back_as_they_were_appended(backends: Backends) -> None:
    backend = await backends.start()
    hostile = "<script>alert('x')</script> \"quotes\" \\ 😀 مرحبا \u2028"
    stored = [
        await backend.append(ROOM, msg("", kind="join", user="Zoë")),
        await backend.append(ROOM, msg(hostile, user="Zoë")),
        await backend.append(ROOM, msg("", kind="leave", user="Zoë")),
    ]
    page = await backend.read_after(ROOM, None, 10)
    assert page.events == [s.event for s in stored]
    assert [e.data for e in page.events] == [s.event.data for s in stored]
    assert page.events[1].text == hostile
    assert [e.type for e in page.events] == ["join", "message", "leave"]
    assert page.events[0].text is None


async def test_ping_answers(backends: Backends) -> None:
    backend = await backends.start()
    await backend.ping()


async def test_cancelled_calls_leave_the_backend_working(backends: Backends) -> None:
    """A client that goes away cancels the read or say it was waiting on."""
    backend = await backends.start()
    busy = [asyncio.create_task(backend.append(ROOM, msg(f"m{i}"))) for i in range(50)]
    await asyncio.sleep(0)  # queued behind one another
    cancelled = [
        asyncio.create_task(backend.read_after(ROOM, None, 10)),
        asyncio.create_task(backend.read_before(ROOM, None, 10)),
        asyncio.create_task(backend.rooms()),
        asyncio.create_task(backend.active_rooms(0)),
        asyncio.create_task(backend.ping()),
        asyncio.create_task(backend.append(ROOM, msg("gone"))),
    ]
    await asyncio.sleep(0)
    for task in cancelled:
        task.cancel()
    await asyncio.gather(*cancelled, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*busy), 5)
    after = await asyncio.wait_for(backend.append(ROOM, msg("after")), 5)
    page = await asyncio.wait_for(backend.read_after(ROOM, None, 100), 5)
    # the cancelled say may or may not have been stored; nothing else is lost or doubled
    assert after.event.offset in (51, 52)
    assert offsets(page.events) == list(range(1, after.event.offset + 1))
    await backend.ping()


# --- idempotent says ---------------------------------------------------------------------


async def test_a_retried_say_answers_the_stored_event_and_stores_nothing(
    backends: Backends,
) -> None:
    backend = await backends.start()
    first = await backend.append(ROOM, msg("hello", session="s1", client_id="c1"))
    again = await backend.append(ROOM, msg("hello, retried", session="s1", client_id="c1"))
    assert not first.duplicate
    assert again.duplicate
    assert again.event == first.event
    assert again.event.data == first.event.data
    assert (await backend.read_after(ROOM, None, 10)).events == [first.event]
    nxt = await backend.append(ROOM, msg("next"))
    assert nxt.event.offset == 2


async def test_idempotency_key_is_session_and_client_id_in_one_room(
    backends: Backends,
) -> None:
    backend = await backends.start()
    base = await backend.append(ROOM, msg("x", session="s1", client_id="c1"))
    others = [
        await backend.append(ROOM, msg("x", session="s2", client_id="c1")),
        await backend.append(ROOM, msg("x", session="s1", client_id="c2")),
        await backend.append("elsewhere", msg("x", session="s1", client_id="c1")),
        await backend.append(ROOM, msg("x", session="s1")),
        await backend.append(ROOM, msg("x", session="s1")),
    ]
    assert not base.duplicate
    assert not any(s.duplicate for s in others)
    assert len((await backend.read_after(ROOM, None, 10)).events) == 5


async def test_concurrent_retries_store_one_event(backends: Backends) -> None:
    backend = await backends.start()
    results: list[Stored] = await asyncio.gather(
        *(backend.append(ROOM, msg("once", session="s1", client_id="k")) for _ in range(8))
    )
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.event.id for r in results}) == 1
    assert len((await backend.read_after(ROOM, None, 10)).events) == 1


async def test_append_many_stores_in_order_as_append_would(backends: Backends) -> None:
    calls: list[list[Event]] = []
    backend = await backends.start(listener=lambda room, events: calls.append([*events]))
    backend.watch(ROOM)
    await backend.read_after(ROOM, None, 0)
    first = await backend.append(ROOM, msg("before", session="s1", client_id="k0"))
    drafts = [
        msg("a", session="s1", client_id="k1"),
        msg("b", session="s1"),
        # a retry of one already stored, and of one earlier in this very batch
        msg("before again", session="s1", client_id="k0"),
        msg("a again", session="s1", client_id="k1"),
        msg("c", session="s1", client_id="k2"),
    ]
    stored = await backend.append_many(ROOM, drafts)
    assert [s.duplicate for s in stored] == [False, False, True, True, False]
    assert [s.event.text for s in stored] == ["a", "b", "before", "a", "c"]
    assert stored[2].event == first.event
    assert stored[3].event == stored[0].event
    assert [s.event.offset for s in stored if not s.duplicate] == [2, 3, 4]
    page = await backend.read_after(ROOM, None, 10)
    assert [e.text for e in page.events] == ["before", "a", "b", "c"]
    # the listener sees each stored event once, in order (however it is batched)
    await eventually(lambda: sum(map(len, calls)) >= 4, within=1)
    assert [e.text for batch in calls for e in batch] == ["before", "a", "b", "c"]
    assert await backend.append_many(ROOM, []) == []


async def test_append_many_beside_concurrent_appends_keeps_each_callers_order(
    backends: Backends,
) -> None:
    backend = await backends.start()

    async def burst(who: str) -> list[Stored]:
        return await backend.append_many(ROOM, [msg(f"{who}{i}", user=who) for i in range(20)])

    results = await asyncio.gather(burst("x"), burst("y"), *(
        backend.append(ROOM, msg(f"z{i}", user="z")) for i in range(10)
    ))
    page = await backend.read_after(ROOM, None, 100)
    assert offsets(page.events) == list(range(1, 51))
    for who in ("x", "y"):
        mine = [e.text for e in page.events if e.user == who]
        assert mine == [f"{who}{i}" for i in range(20)]
    assert len(results) == 12


# --- read_after ------------------------------------------------------------------------------


async def test_read_after_none_is_the_last_n(backends: Backends) -> None:
    backend = await backends.start()
    events = await fill(backend, 10)
    page = await backend.read_after(ROOM, None, 3)
    assert page.events == events[-3:]
    assert not page.reset
    assert page.oldest == events[0].position
    assert page.head == events[-1].position
    assert (await backend.read_after(ROOM, None, 100)).events == events
    bounds = await backend.read_after(ROOM, None, 0)
    assert bounds.events == []
    assert (bounds.oldest, bounds.head) == (events[0].position, events[-1].position)


async def test_read_after_a_cursor_gives_exactly_what_follows(backends: Backends) -> None:
    backend = await backends.start()
    events = await fill(backend, 10)
    epoch = events[0].position.epoch
    for k in range(11):
        page = await backend.read_after(ROOM, Position(epoch, k), 100)
        assert page.events == events[k:], f"after offset {k}"
        assert not page.reset, f"after offset {k}"
        assert page.head == events[-1].position


async def test_read_after_pages_by_limit(backends: Backends) -> None:
    backend = await backends.start()
    events = await fill(backend, 10)
    cursor = Position(events[0].position.epoch, 0)
    pages: list[list[Event]] = []
    while True:
        page = await backend.read_after(ROOM, cursor, 3)
        assert not page.reset
        if not page.events:
            break
        pages.append(page.events)
        cursor = page.events[-1].position
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [e for p in pages for e in p] == events


async def test_read_after_resets_when_the_cursor_cannot_be_honoured(
    backends: Backends,
) -> None:
    backend = await backends.start(retention=5)
    events = await fill(backend, 12)
    retained = events[7:]  # offsets 8..12
    epoch = events[0].position.epoch
    page = await backend.read_after(ROOM, None, 100)
    assert page.events == retained
    assert page.oldest == retained[0].position
    assert page.head == retained[-1].position

    # (cursor, reset?, events)
    cases: list[tuple[Position, bool, list[Event]]] = [
        (Position("zzzz9999", 10), True, retained),  # another epoch
        (Position(epoch, 0), True, retained),  # trimmed away
        (Position(epoch, 3), True, retained),
        (Position(epoch, 6), True, retained),  # offset 7 is gone
        (Position(epoch, 7), False, retained),  # everything after 7 is still here
        (Position(epoch, 10), False, events[10:]),
        (Position(epoch, 12), False, []),  # at the head
        (Position(epoch, 13), True, retained),  # beyond the head
        (Position(epoch, 10**9), True, retained),
    ]
    for cursor, reset, expected in cases:
        page = await backend.read_after(ROOM, cursor, 100)
        assert (page.reset, offsets(page.events)) == (reset, offsets(expected)), str(cursor)
        assert page.events == expected
        assert page.oldest == retained[0].position
        assert page.head == retained[-1].position

    # a reset pages too, oldest first
    page = await backend.read_after(ROOM, Position("zzzz9999", 1), 2)
    assert page.reset
    assert page.events == retained[:2]


async def test_an_empty_room(backends: Backends) -> None:
    backend = await backends.start()
    await fill(backend, 2, "other")
    page = await backend.read_after(ROOM, None, 50)
    assert (page.events, page.reset, page.oldest, page.head) == ([], False, None, None)
    # a cursor into a room that holds nothing is from a stream that is gone
    page = await backend.read_after(ROOM, Position("abcd1234", 3), 50)
    assert (page.events, page.reset, page.oldest, page.head) == ([], True, None, None)
    assert await backend.read_before(ROOM, None, 10) == []
    assert ROOM not in await backend.rooms()
    assert ROOM not in await backend.active_rooms(0)


async def test_retention_keeps_the_newest(backends: Backends) -> None:
    backend = await backends.start(retention=5)
    events = await fill(backend, 20)
    assert (await backend.read_after(ROOM, None, 100)).events == events[-5:]
    assert await backend.read_before(ROOM, None, 100) == events[-5:]
    assert (await backend.append(ROOM, msg("more"))).event.offset == 21


# --- read_before ------------------------------------------------------------------------------


async def test_read_before_pages_back_through_history(backends: Backends) -> None:
    backend = await backends.start()
    events = await fill(backend, 10)
    assert await backend.read_before(ROOM, None, 3) == events[7:]
    assert await backend.read_before(ROOM, events[7].position, 3) == events[4:7]
    assert await backend.read_before(ROOM, events[1].position, 3) == events[:1]
    assert await backend.read_before(ROOM, events[0].position, 3) == []
    assert await backend.read_before(ROOM, None, 0) == []
    assert await backend.read_before(ROOM, None, 100) == events
    # another epoch's cursor names nothing in this stream
    assert await backend.read_before(ROOM, Position("zzzz9999", 5), 3) == []

    pages: list[list[Event]] = []
    before: Position | None = None
    while page := await backend.read_before(ROOM, before, 4):
        pages.append(page)
        before = page[0].position
    assert [len(p) for p in pages] == [4, 4, 2]
    assert [e for p in reversed(pages) for e in p] == events


# --- rooms -----------------------------------------------------------------------------------


async def test_rooms_lists_every_room_that_holds_events(backends: Backends) -> None:
    backend = await backends.start()
    assert await backend.rooms() == []
    await fill(backend, 1, "kitchen")
    await fill(backend, 2, "attic")
    await fill(backend, 1, "kitchen")
    assert sorted(await backend.rooms()) == ["attic", "kitchen"]


async def test_active_rooms_answers_each_rooms_last_activity(backends: Backends) -> None:
    backend = await backends.start(retention=2)
    assert await backend.active_rooms(0) == {}

    def at(ts: int, text: str = "x", **said: str) -> Draft:
        return Draft("message", "alice", ts, text, said.get("session"), said.get("client_id"))

    await backend.append("a", at(1_000))
    await backend.append("b", Draft("join", "bob", 2_000))
    await backend.append("a", at(3_000))
    assert await backend.active_rooms(0) == {"a": 3_000, "b": 2_000}
    assert await backend.active_rooms(2_000) == {"a": 3_000, "b": 2_000}
    assert await backend.active_rooms(2_001) == {"a": 3_000}
    assert await backend.active_rooms(3_001) == {}
    # a later event stamped earlier (a node whose clock is behind) does not lower it
    await backend.append("a", at(2_500))
    assert await backend.active_rooms(3_000) == {"a": 3_000}
    # a duplicate say stores nothing: no activity
    first = await backend.append("b", at(4_000, session="s", client_id="k"))
    again = await backend.append("b", at(9_000, session="s", client_id="k"))
    assert again.duplicate
    assert again.event == first.event
    assert await backend.active_rooms(0) == {"a": 3_000, "b": 4_000}
    # a burst counts its newest stamp; retention (2 here) trims events, not activity
    await backend.append_many("c", [at(5_000), at(7_000), at(6_000), at(5_500)])
    assert await backend.active_rooms(5_000) == {"c": 7_000}
    assert [e.timestamp for e in (await backend.read_after("c", None, 10)).events] == [
        6_000, 5_500,
    ]
    assert sorted(await backend.rooms()) == ["a", "b", "c"]


# --- the listener -------------------------------------------------------------------------


async def test_listener_gets_every_stored_event_once_in_order(backends: Backends) -> None:
    calls: list[tuple[str, list[Event]]] = []
    backend = await backends.start(listener=lambda room, events: calls.append((room, [*events])))
    for room in ("a", "b"):
        # As the broker does for a new subscriber: watch, then read. Everything stored
        # after what that read saw must reach the listener (Redis: through its XREAD).
        backend.watch(room)
        await backend.read_after(room, None, 0)
    drafts = [
        ("a" if i % 3 else "b", msg(f"m{i}", session="s", client_id=f"k{i % 25}"))
        for i in range(40)
    ]  # k0..k14 come twice: 15 duplicates per key space
    results = await asyncio.gather(*(backend.append(room, d) for room, d in drafts))
    stored: dict[str, list[Event]] = {"a": [], "b": []}
    for (room, _), result in zip(drafts, results, strict=True):
        if not result.duplicate:
            stored[room].append(result.event)
    assert sum(r.duplicate for r in results) > 0

    await eventually(
        lambda: sum(len(events) for _, events in calls) >= sum(map(len, stored.values())),
        within=1,
    )
    for room in ("a", "b"):
        seen = [e for r, events in calls if r == room for e in events]
        assert seen == sorted(stored[room], key=lambda e: e.offset)
        assert offsets(seen) == list(range(1, len(seen) + 1))
    assert all(e.room == room for room, events in calls for e in events)


# --- presence ------------------------------------------------------------------------------


async def test_presence_touch_check_members_counts(backends: Backends) -> None:
    presence = (await backends.start()).presence
    assert await presence.touch(ROOM, "alice", "s1", "c1", 5) is True
    assert await presence.touch(ROOM, "alice", "s1", "c2", 5) is False
    with pytest.raises(NicknameTaken):
        await presence.touch(ROOM, "alice", "s2", "c3", 5)
    with pytest.raises(NicknameTaken):
        await presence.check(ROOM, "alice", "s2")
    await presence.check(ROOM, "alice", "s1")
    with pytest.raises(NotMember):
        await presence.check(ROOM, "bob", "s2")  # not in the room: it may not speak there
    assert await presence.touch(ROOM, "bob", "s2", "c3", 5) is True
    await presence.check(ROOM, "bob", "s2")
    assert await presence.touch("kitchen", "carol", "s3", "c4", 5) is True
    assert await presence.members(ROOM) == ["alice", "bob"]
    assert await presence.members("kitchen") == ["carol"]
    assert await presence.members("nowhere") == []
    assert await presence.counts() == {ROOM: 2, "kitchen": 1}


async def test_presence_leave(backends: Backends) -> None:
    presence = (await backends.start()).presence
    await presence.touch(ROOM, "alice", "s1", "c1", 5)
    await presence.touch(ROOM, "bob", "s2", "c2", 5)
    assert await presence.leave(ROOM, "alice", "s2") is False  # not hers to end
    assert await presence.leave(ROOM, "alice", "s1") is True
    assert await presence.leave(ROOM, "alice", "s1") is False
    assert await presence.members(ROOM) == ["bob"]
    assert await presence.expire() == []
    # the nickname is free at once
    assert await presence.touch(ROOM, "alice", "s9", "c9", 5) is True


async def test_presence_release_lingers_then_expires(backends: Backends) -> None:
    clock = ManualClock()
    presence = (await backends.start(presence_clock=clock)).presence
    await presence.touch(ROOM, "alice", "s1", "c1", 5)
    await presence.touch(ROOM, "alice", "s1", "c2", 5)
    await presence.touch(ROOM, "bob", "s2", "c3", 0.3)
    await presence.release(ROOM, "alice", "c1", 0.3)
    await presence.release(ROOM, "alice", "c2", 0.3)
    assert await presence.members(ROOM) == ["alice", "bob"]
    assert await presence.expire() == []
    clock.advance(0.25)
    assert await presence.members(ROOM) == ["alice", "bob"]
    assert await presence.expire() == []
    clock.advance(0.25)
    assert await presence.members(ROOM) == []
    assert sorted(await presence.expire()) == [(ROOM, "alice"), (ROOM, "bob")]
    assert await presence.expire() == []
    assert await presence.counts() == {}
    assert await presence.touch(ROOM, "alice", "s2", "c5", 5) is True


async def test_presence_joins_and_leaves_come_in_pairs(backends: Backends) -> None:
    """A member whose presence ran out but whom expire() has not reported yet never
    left in the room's eyes: its return is no second join, its leave is still one."""
    clock = ManualClock()
    presence = (await backends.start(presence_clock=clock)).presence
    assert await presence.touch(ROOM, "alice", "s1", "poll", 0.5) is True
    assert await presence.touch(ROOM, "bob", "s2", "poll", 0.5) is True
    clock.advance(1)  # both ran out; nobody reaped them
    assert await presence.touch(ROOM, "alice", "s1", "poll", 5) is False
    assert await presence.leave(ROOM, "bob", "s2") is True
    assert await presence.expire() == []
    assert await presence.members(ROOM) == ["alice"]


async def test_presence_a_session_that_left_stays_out_until_it_rejoins(
    backends: Backends,
) -> None:
    presence = (await backends.start()).presence
    assert await presence.touch(ROOM, "alice", "s1", "ws", 5) is True
    assert await presence.leave(ROOM, "alice", "s1") is True
    with pytest.raises(LeftRoom):
        await presence.touch(ROOM, "alice", "s1", "ws", 5)
    with pytest.raises(LeftRoom):
        await presence.check(ROOM, "alice", "s1")
    assert await presence.members(ROOM) == []
    assert await presence.touch("kitchen", "alice", "s1", "ws", 5) is True
    assert await presence.touch(ROOM, "alice", "s1", "poll", 5, rejoin=True) is True
    assert await presence.touch(ROOM, "alice", "s1", "ws", 5) is False
    await presence.check(ROOM, "alice", "s1")
    assert await presence.members(ROOM) == ["alice"]


async def test_presence_leave_belongs_to_the_session_that_left(backends: Backends) -> None:
    """Another session with the same nickname (minted in another room) can neither
    undo nor take over the Leave of the session that pressed it."""
    presence = (await backends.start()).presence
    assert await presence.touch(ROOM, "alice", "s1", "ws", 5) is True
    assert await presence.leave(ROOM, "alice", "s1") is True
    assert await presence.touch("kitchen", "alice", "s2", "poll", 5) is True
    # s2 presses Leave in the room it never entered: nothing of s1's changes
    assert await presence.leave(ROOM, "alice", "s2") is False
    with pytest.raises(LeftRoom):
        await presence.touch(ROOM, "alice", "s1", "ws", 5)
    with pytest.raises(LeftRoom):
        await presence.check(ROOM, "alice", "s1")
    # s2 enters through the welcome page and holds the name (s1 is told so), lifting
    # only its own marker; s1's welcome page finds the name taken and lifts nothing
    assert await presence.touch(ROOM, "alice", "s2", "poll", 5, rejoin=True) is True
    with pytest.raises(NicknameTaken):
        await presence.check(ROOM, "alice", "s1")
    with pytest.raises(NicknameTaken):
        await presence.touch(ROOM, "alice", "s1", "poll", 5, rejoin=True)
    assert await presence.leave(ROOM, "alice", "s2") is True
    # the name is free again, and s1 is still out
    with pytest.raises(LeftRoom):
        await presence.touch(ROOM, "alice", "s1", "ws", 5)
    with pytest.raises(LeftRoom):
        await presence.check(ROOM, "alice", "s1")
    # only its own rejoin lets s1 back in
    assert await presence.touch(ROOM, "alice", "s1", "poll", 5, rejoin=True) is True
    await presence.check(ROOM, "alice", "s1")
    assert await presence.members(ROOM) == ["alice"]


async def test_presence_a_leave_from_another_session_removes_no_one(
    backends: Backends,
) -> None:
    presence = (await backends.start()).presence
    assert await presence.touch(ROOM, "alice", "s1", "ws", 5) is True
    assert await presence.leave(ROOM, "alice", "s2") is False
    assert await presence.leave(ROOM, "Alice", "s2") is False  # nor under a look-alike
    assert await presence.members(ROOM) == ["alice"]
    await presence.check(ROOM, "alice", "s1")
    assert await presence.touch(ROOM, "alice", "s1", "ws", 5) is False
    assert await presence.expire() == []


async def test_presence_check_lets_only_a_live_member_speak(backends: Backends) -> None:
    clock = ManualClock()
    presence = (await backends.start(presence_clock=clock)).presence
    with pytest.raises(NotMember):
        await presence.check(ROOM, "alice", "s1")  # never entered
    assert await presence.touch("kitchen", "alice", "s1", "ws", 5) is True
    with pytest.raises(NotMember):
        await presence.check(ROOM, "alice", "s1")  # a member elsewhere only
    assert await presence.touch(ROOM, "alice", "s1", "poll", 0.5) is True
    await presence.check(ROOM, "alice", "s1")
    clock.advance(0.5)
    # ran out, not reaped yet: listed by no one, and not live
    assert await presence.members(ROOM) == []
    with pytest.raises(NotMember):
        await presence.check(ROOM, "alice", "s1")
    # a poll makes it live again, and that is no second join
    assert await presence.touch(ROOM, "alice", "s1", "poll", 5) is False
    await presence.check(ROOM, "alice", "s1")
    # another session: taken while she is live
    with pytest.raises(NicknameTaken):
        await presence.check(ROOM, "alice", "s2")
    # once she left, her session is told it left (not "not a member")
    assert await presence.leave(ROOM, "alice", "s1") is True
    with pytest.raises(LeftRoom):
        await presence.check(ROOM, "alice", "s1")
    with pytest.raises(NotMember):
        await presence.check(ROOM, "alice", "s2")
    assert await presence.expire() == []  # her kitchen presence lives on
    await presence.check("kitchen", "alice", "s1")


async def test_presence_look_alike_nicknames_are_one_name(backends: Backends) -> None:
    clock = ManualClock()
    presence = (await backends.start(presence_clock=clock)).presence
    assert await presence.touch(ROOM, "victim", "s1", "ws", 5) is True
    look_alikes = ["Victim", "VICTIM", "v\u0456ctim", "\uff56\uff49\uff43\uff54\uff49\uff4d"]
    for i, other in enumerate(look_alikes):
        session = f"other{i}"
        with pytest.raises(NicknameTaken):
            await presence.touch(ROOM, other, session, "ws", 5, rejoin=True)
        with pytest.raises(NicknameTaken):
            await presence.check(ROOM, other, session)
        assert await presence.leave(ROOM, other, session) is False
    assert await presence.members(ROOM) == ["victim"]
    assert await presence.counts() == {ROOM: 1}
    # the holder under a look-alike of its own name is the same member: no second join;
    # polls and heartbeats keep the name shown, the welcome page shows the new spelling
    await presence.check(ROOM, "Victim", "s1")
    assert await presence.touch(ROOM, "Victim", "s1", "poll", 5) is False
    assert await presence.members(ROOM) == ["victim"]
    assert await presence.touch(ROOM, "Victim", "s1", "poll", 5, rejoin=True) is False
    assert await presence.members(ROOM) == ["Victim"]
    # leave and expiry report the name shown
    await presence.release(ROOM, "victim", "ws", 0.25)
    await presence.release(ROOM, "Victim", "poll", 0.25)
    clock.advance(0.25)
    assert await presence.expire() == [(ROOM, "Victim")]
    # and the name is free, for any spelling of it
    assert await presence.touch(ROOM, "v\u0456ctim", "s2", "ws", 5) is True
    assert await presence.members(ROOM) == ["v\u0456ctim"]
    with pytest.raises(NicknameTaken):
        await presence.touch(ROOM, "victim", "s1", "ws", 5)


# --- the registry ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["postgres://db/chat", "sqlite:///", "chat.db", "mem://"])
def test_open_backend_refuses_urls_it_does_not_know(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite|backend"):
        open_backend(url)
