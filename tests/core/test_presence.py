"""core.presence: the pure presence table, with the clock passed in as `now`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatroom.core.presence import LEFT_TTL, LeftRoom, NicknameTaken, NotMember, PresenceTable
from chatroom.core.validation import skeleton

ROOM = "lobby"


def test_first_connection_joins_and_a_second_tab_does_not() -> None:
    table = PresenceTable()
    assert table.touch(ROOM, "alice", "s1", "tab1", until=30, now=0) is True
    assert table.touch(ROOM, "alice", "s1", "tab2", until=30, now=1) is False
    assert table.touch(ROOM, "alice", "s1", "tab1", until=40, now=2) is False
    assert table.members(ROOM, now=3) == ["alice"]


def test_another_session_is_refused_while_the_nickname_is_present() -> None:
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    with pytest.raises(NicknameTaken) as caught:
        table.touch(ROOM, "alice", "s2", "c2", until=30, now=10)
    assert caught.value.room == ROOM
    assert caught.value.user == "alice"
    assert "alice" in str(caught.value)
    assert "in use" in str(caught.value)
    with pytest.raises(NicknameTaken):
        table.check(ROOM, "alice", "s2", now=10)
    # the holder itself may speak; another nickname and another room are not taken
    # (s2 is no member there yet: it may enter, not speak)
    table.check(ROOM, "alice", "s1", now=10)
    with pytest.raises(NotMember):
        table.check(ROOM, "bob", "s2", now=10)
    with pytest.raises(NotMember):
        table.check("other", "alice", "s2", now=10)
    assert table.touch("other", "alice", "s2", "c2", until=30, now=10) is True
    assert table.touch(ROOM, "bob", "s2", "c3", until=30, now=10) is True
    table.check("other", "alice", "s2", now=10)
    table.check(ROOM, "bob", "s2", now=10)


def test_a_nickname_is_free_again_once_its_holder_expired() -> None:
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    with pytest.raises(NotMember):  # not taken: expiry is exclusive, at 30 it is gone
        table.check(ROOM, "alice", "s2", now=30)
    assert table.expire(now=30) == [(ROOM, "alice")]
    assert table.touch(ROOM, "alice", "s2", "c2", until=60, now=31) is True
    with pytest.raises(NicknameTaken):
        table.touch(ROOM, "alice", "s1", "c1", until=60, now=32)


def test_touch_never_shortens_a_connection() -> None:
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    table.touch(ROOM, "alice", "s1", "c1", until=5, now=1)
    assert table.members(ROOM, now=20) == ["alice"]


def test_a_released_connection_lingers_then_expires_once() -> None:
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    table.release(ROOM, "alice", "c1", until=5)
    assert table.members(ROOM, now=4) == ["alice"]
    assert table.expire(now=4) == []
    assert table.members(ROOM, now=5) == []
    assert table.expire(now=5) == [(ROOM, "alice")]
    assert table.expire(now=6) == []
    assert table.counts(now=6) == {}


def test_release_never_extends_a_connection() -> None:
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "c1", until=3, now=0)
    table.release(ROOM, "alice", "c1", until=50)
    assert table.expire(now=3) == [(ROOM, "alice")]


def test_one_tab_closing_keeps_the_member_while_another_is_open() -> None:
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    table.touch(ROOM, "alice", "s1", "c2", until=30, now=0)
    table.release(ROOM, "alice", "c1", until=2)
    assert table.expire(now=10) == []
    assert table.members(ROOM, now=10) == ["alice"]
    table.release(ROOM, "alice", "c2", until=12)
    assert table.expire(now=12) == [(ROOM, "alice")]


def test_release_of_unknown_things_is_harmless() -> None:
    table = PresenceTable()
    table.release(ROOM, "nobody", "c1", until=1)
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    table.release(ROOM, "alice", "not-a-conn", until=1)
    assert table.members(ROOM, now=10) == ["alice"]


def test_leave_removes_at_once_and_only_for_the_holder() -> None:
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    assert table.leave(ROOM, "alice", "s2", now=1) is False
    assert table.members(ROOM, now=1) == ["alice"]
    assert table.leave(ROOM, "alice", "s1", now=1) is True
    assert table.members(ROOM, now=1) == []
    assert table.leave(ROOM, "alice", "s1", now=1) is False
    assert table.expire(now=100) == []
    # and the nickname is free for anyone at once (s2 pressed Leave here: it is out)
    assert table.touch(ROOM, "alice", "s3", "c2", until=30, now=2) is True


def test_members_and_counts_list_only_the_present() -> None:
    table = PresenceTable()
    table.touch(ROOM, "carol", "s3", "c3", until=30, now=0)
    table.touch(ROOM, "alice", "s1", "c1", until=30, now=0)
    table.touch(ROOM, "bob", "s2", "c2", until=5, now=0)
    table.touch("kitchen", "dave", "s4", "c4", until=30, now=0)
    assert table.members(ROOM, now=1) == ["alice", "bob", "carol"]
    assert table.counts(now=1) == {ROOM: 3, "kitchen": 1}
    assert table.members(ROOM, now=6) == ["alice", "carol"]
    assert table.counts(now=6) == {ROOM: 2, "kitchen": 1}
    assert table.counts(now=31) == {}
    assert table.members("nowhere", now=0) == []


# --- join and leave come in pairs ------------------------------------------------------
#
# Every join reported (touch() -> True) is followed by exactly one leave reported
# (leave() -> True, or expire() naming the member) before the next join of that nickname.
# Otherwise a room shows "alice joined" twice, or never shows her leaving.


def test_coming_back_after_expiry_but_before_the_reaper_is_no_second_join() -> None:
    table = PresenceTable()
    assert table.touch(ROOM, "alice", "s1", "poll", until=30, now=0) is True
    # the lease ran out at 30; the reaper has not run yet when she polls again
    joined_again = table.touch(ROOM, "alice", "s1", "poll", until=61, now=31)
    gone = table.expire(now=32)
    # either no leave and no join (seen as present throughout), or a leave then a join
    assert (joined_again, gone) == (False, [])


def test_a_session_that_left_stays_out_until_it_rejoins() -> None:
    table = PresenceTable()
    assert table.touch(ROOM, "alice", "s1", "ws", until=30, now=0) is True
    assert table.leave(ROOM, "alice", "s1", now=1) is True
    # a heartbeat or a poll still in flight after the Leave does not bring her back
    with pytest.raises(LeftRoom):
        table.touch(ROOM, "alice", "s1", "ws", until=40, now=2)
    with pytest.raises(LeftRoom):
        table.check(ROOM, "alice", "s1", now=2)
    assert table.members(ROOM, now=2) == []
    # another session may take the nickname; the one that left is not blocked elsewhere
    assert table.touch("kitchen", "alice", "s1", "ws", until=40, now=2) is True
    # entering again through the welcome page lifts it
    assert table.touch(ROOM, "alice", "s1", "poll", until=40, now=3, rejoin=True) is True
    assert table.touch(ROOM, "alice", "s1", "ws", until=40, now=4) is False
    # the marker is forgotten after LEFT_TTL
    table.leave(ROOM, "alice", "s1", now=5)
    table.expire(now=5 + LEFT_TTL + 1)
    assert table.touch(ROOM, "alice", "s1", "ws", until=LEFT_TTL + 60, now=5 + LEFT_TTL + 2)


def test_the_leave_marker_is_the_sessions_own() -> None:
    """Another session of the same nickname (minted in another room) pressing Leave here
    neither lifts nor takes over the marker of the session that left."""
    table = PresenceTable()
    table.touch(ROOM, "alice", "s1", "ws", until=30, now=0)
    assert table.leave(ROOM, "alice", "s1", now=1) is True
    table.touch("kitchen", "alice", "s2", "poll", until=30, now=2)
    assert table.leave(ROOM, "alice", "s2", now=3) is False
    with pytest.raises(LeftRoom):
        table.touch(ROOM, "alice", "s1", "ws", until=40, now=4)
    with pytest.raises(LeftRoom):
        table.check(ROOM, "alice", "s1", now=4)
    # s2's own entry through the welcome page lifts s2's marker only
    assert table.touch(ROOM, "alice", "s2", "poll", until=40, now=5, rejoin=True) is True
    # s1's welcome page while s2 holds the name: refused, and s1 stays out
    with pytest.raises(NicknameTaken):
        table.touch(ROOM, "alice", "s1", "poll", until=40, now=6, rejoin=True)
    assert table.members(ROOM, now=7) == ["alice"]
    assert table.members("kitchen", now=7) == ["alice"]
    assert table.leave(ROOM, "alice", "s2", now=8) is True
    with pytest.raises(LeftRoom):
        table.touch(ROOM, "alice", "s1", "ws", until=40, now=9)
    with pytest.raises(LeftRoom):
        table.check(ROOM, "alice", "s1", now=9)
    assert table.touch(ROOM, "alice", "s1", "poll", until=40, now=10, rejoin=True) is True


def test_check_lets_only_a_live_member_speak() -> None:
    table = PresenceTable()
    with pytest.raises(NotMember) as caught:
        table.check(ROOM, "alice", "s1", now=0)
    assert (caught.value.room, caught.value.user) == (ROOM, "alice")
    assert "welcome page" in str(caught.value)
    table.touch("kitchen", "alice", "s1", "c1", until=30, now=0)
    with pytest.raises(NotMember):
        table.check(ROOM, "alice", "s1", now=1)
    table.touch(ROOM, "alice", "s1", "poll", until=30, now=1)
    table.check(ROOM, "alice", "s1", now=29)
    # ran out at 30, not reaped yet: no longer live, so no longer heard
    with pytest.raises(NotMember):
        table.check(ROOM, "alice", "s1", now=30)
    with pytest.raises(NotMember):
        table.check(ROOM, "alice", "s2", now=30)  # the name is free, s2 is no member
    assert table.touch(ROOM, "alice", "s1", "poll", until=60, now=31) is False
    table.check(ROOM, "alice", "s1", now=31)
    with pytest.raises(NicknameTaken):
        table.check(ROOM, "alice", "s2", now=31)
    table.leave(ROOM, "alice", "s1", now=32)
    with pytest.raises(LeftRoom):  # not NotMember: it tells her what happened
        table.check(ROOM, "alice", "s1", now=32)


@pytest.mark.parametrize(
    "look_alike",
    ["Victim", "VICTIM", "v\u0456ctim", "\uff56\uff49\uff43\uff54\uff49\uff4d", "vict\u0131m"],
)
def test_a_look_alike_of_a_live_name_is_that_name(look_alike: str) -> None:
    table = PresenceTable()
    table.touch(ROOM, "victim", "s1", "c1", until=30, now=0)
    with pytest.raises(NicknameTaken) as caught:
        table.touch(ROOM, look_alike, "s2", "c2", until=30, now=1, rejoin=True)
    assert caught.value.user == look_alike  # told in the words it chose
    with pytest.raises(NicknameTaken):
        table.check(ROOM, look_alike, "s2", now=1)
    assert table.leave(ROOM, look_alike, "s2", now=1) is False
    assert table.members(ROOM, now=1) == ["victim"]
    table.release(ROOM, look_alike, "c1", until=5)  # the member's own connection
    assert table.expire(now=5) == [(ROOM, "victim")]
    assert table.touch(ROOM, look_alike, "s3", "c3", until=30, now=6) is True
    assert table.members(ROOM, now=6) == [look_alike]


def test_the_holder_under_a_look_alike_of_its_own_name_keeps_its_place() -> None:
    table = PresenceTable()
    assert table.touch(ROOM, "alice", "s1", "ws", until=30, now=0) is True
    table.check(ROOM, "Alice", "s1", now=1)
    assert table.touch(ROOM, "Alice", "s1", "poll", until=30, now=1) is False
    assert table.members(ROOM, now=1) == ["alice"]  # a poll does not rename
    assert table.touch(ROOM, "Alice", "s1", "poll", until=30, now=2, rejoin=True) is False
    assert table.members(ROOM, now=2) == ["Alice"]  # the welcome page does
    assert table.leave(ROOM, "alice", "s1", now=3) is True
    assert table.members(ROOM, now=3) == []


def test_leave_button_after_expiry_but_before_the_reaper_still_reports_the_leave() -> None:
    table = PresenceTable()
    assert table.touch(ROOM, "alice", "s1", "poll", until=30, now=0) is True
    left = table.leave(ROOM, "alice", "s1", now=31)
    gone = table.expire(now=32)
    assert left or gone == [(ROOM, "alice")]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["touch", "touch", "rejoin", "release", "leave", "expire", "check"]),
        st.sampled_from(["alice", "bob", "Alice", "b\u043eb"]),
        st.sampled_from(["s1", "s2"]),
        st.sampled_from(["c1", "c2", "c3"]),
        st.floats(min_value=0.0, max_value=4.0),
        st.floats(min_value=0.0, max_value=6.0),
    ),
    max_size=40,
)


@settings(deadline=None)
@given(OPS)
def test_joins_and_leaves_alternate_and_a_leave_stays_with_its_session(
    ops: list[tuple[str, str, str, str, float, float]],
) -> None:
    """Joins and leaves alternate for every name (look-alikes are one name); a session
    that pressed Leave is out until its own rejoin; check() lets only live members speak."""
    table = PresenceTable()
    present: set[str] = set()  # skeletons joined and not yet reported as left
    out: set[str] = set()  # sessions that pressed Leave and did not enter again since
    now = 0.0

    def left(name: str) -> None:
        key = skeleton(name)
        assert key in present, f"leave of {name} without a join"
        present.remove(key)

    for kind, user, session, conn, dt, ttl in ops:
        now += dt
        if kind in ("touch", "rejoin"):
            rejoin = kind == "rejoin"
            try:
                joined = table.touch(
                    ROOM, user, session, f"{session}:{conn}", now + ttl, now, rejoin
                )
            except LeftRoom:
                assert session in out
                assert not rejoin
                continue
            except NicknameTaken:
                continue  # before LeftRoom: another session holds the name now
            assert rejoin or session not in out, f"{session} came back without the welcome page"
            if rejoin:
                out.discard(session)
            if joined:
                assert skeleton(user) not in present, f"second join of {user} without a leave"
                present.add(skeleton(user))
        elif kind == "release":
            table.release(ROOM, user, f"{session}:{conn}", now + ttl / 4)
        elif kind == "leave":
            out.add(session)
            if table.leave(ROOM, user, session, now):
                left(user)
        elif kind == "check":
            try:
                table.check(ROOM, user, session, now)
            except LeftRoom:
                assert session in out
            except NicknameTaken:
                pass
            except NotMember:
                assert session not in out
            else:
                assert session not in out
                assert skeleton(user) in {skeleton(m) for m in table.members(ROOM, now)}
        else:
            for room, gone in table.expire(now):
                assert room == ROOM
                left(gone)
        # whoever is listed as present was announced, and not announced gone; one each
        listed = [skeleton(m) for m in table.members(ROOM, now)]
        assert set(listed) <= present
        assert len(set(listed)) == len(listed)
    for _, gone in table.expire(now + 1000):
        left(gone)
    assert present == set()
