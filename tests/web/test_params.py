"""The edge's total parsers (chatroom.web.params): a typed value or InvalidInput, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatroom.core.events import UNKNOWN, Position
from chatroom.core.validation import InvalidInput
from chatroom.web.params import (
    Follow,
    RoomKey,
    TooManyRooms,
    cursor_param,
    follow_param,
    int_param,
    room_key_param,
    room_param,
    single,
)


def limit(raw: str | None) -> int:
    return int_param(raw, name="limit", default=50, lo=1, hi=500)


@pytest.mark.parametrize(
    ("raw", "value"), [(None, 50), ("1", 1), ("500", 500), ("050", 50), ("0" * 17 + "7", 7)]
)
def test_int_param_takes_ascii_digits_in_range(raw: str | None, value: int) -> None:
    assert limit(raw) == value


@pytest.mark.parametrize(
    "raw",
    ["", "0", "501", "-1", "+1", " 1", "1 ", "1.0", "1e2", "0x1", "\u00b2", "\u0663", "\uff11",
     "1\n", "9" * 19, "1" * 5000, "\U0001d7cf"],
)
def test_int_param_refuses_everything_else(raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        limit(raw)
    assert caught.value.field == "limit"
    assert caught.value.reason == "limit must be a whole number from 1 to 500"


@given(st.text())
def test_int_param_is_total(raw: str) -> None:
    try:
        value = limit(raw)
    except InvalidInput:
        assert not (raw.isascii() and raw.isdigit() and len(raw) <= 18 and 1 <= int(raw) <= 500)
    else:
        assert raw.isascii()
        assert raw.isdigit()
        assert value == int(raw)


def test_int_param_bounds_are_the_callers_to_get_right() -> None:
    with pytest.raises(ValueError, match="bounds"):
        int_param("1", name="n", default=1, lo=5, hi=1)
    with pytest.raises(ValueError, match="bounds"):
        int_param("1", name="n", default=1, lo=-1, hi=1)


def test_cursor_param() -> None:
    assert cursor_param(None, "before") is None
    assert cursor_param("", "before") is None
    assert cursor_param("3f9a0c21-42", "before") == Position("3f9a0c21", 42)
    bad = ("x", "-1", "abc-", "ABC-1", "a-b-1", "abc-\u0663", "a" * 33 + "-1", "a-" + "1" * 19)
    for raw in bad:
        with pytest.raises(InvalidInput) as caught:
            cursor_param(raw, "before")
        assert caught.value.field == "before"


@given(st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=32),
       st.integers(0, 10**18 - 1))
def test_cursor_param_reads_back_every_id(epoch: str, offset: int) -> None:
    position = Position(epoch, offset)
    assert cursor_param(str(position), "before") == position


@given(st.text())
def test_cursor_param_is_total(raw: str) -> None:
    try:
        position = cursor_param(raw, "before")
    except InvalidInput:
        return  # nothing else escapes
    assert (position is None) == (raw == "")
    if position is not None:
        assert cursor_param(str(position), "before") == position


def test_room_param() -> None:
    assert room_param("lobby") == "lobby"
    assert room_param("Mixed-Case_1") == "mixed-case_1"
    assert room_param(None, default="lobby") == "lobby"
    assert room_param("", default="lobby") == "lobby"
    for raw in (None, "", " lobby", "lobby ", "a b", "a/b", "x" * 65, "caf\u00e9", "\u212a", "a\n"):
        with pytest.raises(InvalidInput) as caught:
            room_param(raw)
        assert caught.value.field == "room"


def test_room_key_param() -> None:
    assert room_key_param(None, "cursor") is None
    assert room_key_param("", "cursor") is None
    key = RoomKey(3, "lobby")
    assert str(key) == "3.lobby"
    assert room_key_param(str(key), "cursor") == key
    for raw in ("lobby", "3.", ".lobby", "-1.lobby", "3.LOBBY", "\u0663.lobby", "3.a b", "0.a.b",
                "1" * 19 + ".a"):
        with pytest.raises(InvalidInput) as caught:
            room_key_param(raw, "cursor")
        assert caught.value.field == "cursor"


def test_single() -> None:
    assert single([], "limit") is None
    assert single(["5"], "limit") == "5"
    with pytest.raises(InvalidInput) as caught:
        single(["5", "6"], "limit")
    assert caught.value.field == "limit"


def test_follow_param_reads_each_room_and_its_cursor() -> None:
    follows = follow_param(["den:abc123-7", "Attic", "cellar:", "x:not a cursor"], limit=4)
    assert follows == (
        Follow("den", Position("abc123", 7)),
        Follow("attic", None),
        Follow("cellar", None),
        # malformed: an unknown cursor, answered with a reset (never a lost place)
        Follow("x", UNKNOWN),
    )


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["den", "den:abc-1"], "followed twice"),
        (["den", "DEN"], "followed twice"),
        ([""], "room names"),
        ([":abc-1"], "room names"),
        (["a b"], "room names"),
        (["é"], "room names"),
        (["a" * 65], "room names"),
    ],
)
def test_follow_param_refuses_a_bad_room(values: list[str], reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        follow_param(values, limit=8)
    assert caught.value.field == "follow"
    assert reason in caught.value.reason
    assert not isinstance(caught.value, TooManyRooms)


def test_follow_param_refuses_more_rooms_than_the_limit() -> None:
    assert len(follow_param([f"r{n}" for n in range(3)], limit=3)) == 3
    with pytest.raises(TooManyRooms) as caught:
        follow_param([f"r{n}" for n in range(4)], limit=3)
    assert caught.value.field == "follow"
    assert "at most 3 rooms" in caught.value.reason


@given(st.lists(st.text(max_size=80), max_size=6))
def test_follow_param_is_total(values: list[str]) -> None:
    field = None
    follows: tuple[Follow, ...] = ()
    try:
        follows = follow_param(values, limit=4)
    except InvalidInput as exc:
        field = exc.field
    assert field in (None, "follow")
    assert len({f.room for f in follows}) == len(follows) <= 4
