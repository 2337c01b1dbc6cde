"""core.events: positions, cursors, the one-time encoding, and how a cursor is answered."""

from __future__ import annotations

import string

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from chatroom.core.events import (
    Event,
    EventType,
    Position,
    encode_reset,
    new_epoch,
    parse_cursor,
    resume_from,
    sse_chunk,
    ws_frame,
)

EPOCH_ALPHABET = string.digits + string.ascii_lowercase

epochs = st.text(alphabet=EPOCH_ALPHABET, min_size=1, max_size=32)
offsets = st.integers(min_value=0, max_value=10**18 - 1)
positions = st.builds(Position, epochs, offsets)
KINDS: tuple[EventType, ...] = ("join", "leave", "message")


# --- Position and epochs ------------------------------------------------------


def test_position_prints_as_epoch_dash_offset() -> None:
    assert str(Position("a1b2c3d4", 42)) == "a1b2c3d4-42"


def test_positions_of_one_epoch_order_by_offset() -> None:
    assert Position("e", 9) < Position("e", 10)
    assert sorted([Position("e", 3), Position("e", 1), Position("e", 2)]) == [
        Position("e", 1),
        Position("e", 2),
        Position("e", 3),
    ]


def test_new_epoch_is_eight_lowercase_hex_and_fresh() -> None:
    seen = {new_epoch() for _ in range(50)}
    assert len(seen) == 50
    for epoch in seen:
        assert len(epoch) == 8
        assert set(epoch) <= set("0123456789abcdef")
        assert parse_cursor(f"{epoch}-1") == Position(epoch, 1)


# --- parse_cursor ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc-1", Position("abc", 1)),
        ("abc-0", Position("abc", 0)),
        ("0f9e-123456789012345678", Position("0f9e", 123456789012345678)),
        ("a" * 32 + "-5", Position("a" * 32, 5)),
        ("abc-007", Position("abc", 7)),
    ],
)
def test_parse_cursor_accepts_ids_the_server_makes(text: str, expected: Position) -> None:
    assert parse_cursor(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "abc",  # no separator
        "-5",  # no epoch
        "abc-",  # no offset
        "ABC-1",  # upper case is not an epoch character
        "ab_c-1",
        "abc--1",  # negative offset
        "abc-+1",
        "abc- 1",
        "abc-1 ",
        "abc-1.5",
        "abc-1e3",
        "abc-\u0661",  # ARABIC-INDIC DIGIT ONE: isdigit() but not ASCII
        "abc-" + "9" * 19,  # longer than any offset the server makes
        "a" * 33 + "-1",  # epoch too long
        "42",  # the sample's bare integer ids
        "null",
    ],
)
def test_parse_cursor_treats_anything_else_as_unknown(text: str | None) -> None:
    assert parse_cursor(text) is None


@given(positions)
def test_parse_cursor_round_trips_every_position(position: Position) -> None:
    assert parse_cursor(str(position)) == position


@given(st.text())
@example("\ud800-1")
@example("abc-\ud800")
@example("\x00-1")
def test_parse_cursor_never_raises(text: str) -> None:
    position = parse_cursor(text)
    if position is not None:
        # whatever it accepts is a position it would print back the same way
        assert position.offset >= 0
        assert parse_cursor(str(position)) == position


@given(st.text(alphabet=EPOCH_ALPHABET + "-0123456789", max_size=40))
def test_parse_cursor_never_raises_on_near_misses(text: str) -> None:
    position = parse_cursor(text)
    if position is not None:
        assert str(position) == f"{position.epoch}-{position.offset}"


# --- Event ----------------------------------------------------------------------------


def test_event_is_encoded_once_in_the_wire_format() -> None:
    event = Event.create("lobby", Position("e1", 42), "message", "alice", 1764115200123, "hi")
    assert orjson.loads(event.data) == {
        "id": "e1-42",
        "room": "lobby",
        "type": "message",
        "user": "alice",
        "text": "hi",
        "timestamp": 1764115200123,
    }
    assert event.id == "e1-42"
    assert event.offset == 42
    assert event.as_dict() == orjson.loads(event.data)


# RFC 6455 section 5.7's examples, with the text opcode (0x81) where they show binary
@pytest.mark.parametrize(
    ("size", "head"),
    [
        (0, b"\x81\x00"),
        (5, b"\x81\x05"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (256, b"\x81\x7e\x01\x00"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_ws_frame_is_one_final_unmasked_text_frame(size: int, head: bytes) -> None:
    data = b"x" * size
    assert ws_frame(data) == head + data


def test_rfc_6455_hello_example() -> None:
    assert ws_frame(b"Hello") == bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])


def test_sse_chunk_is_one_http_chunk() -> None:
    frame = b"id: e-1\ndata: {}\n\n"
    assert sse_chunk(frame) == b"12\r\n" + frame + b"\r\n"
    assert len(frame) == 0x12


def test_every_framing_is_made_once_with_the_event() -> None:
    event = Event.create("lobby", Position("e", 7), "message", "ann", 1, "hi")
    assert event.ws == ws_frame(event.data)
    assert event.sse_chunk == sse_chunk(event.sse)
    decoded = Event.decode(event.data)
    assert (decoded.ws, decoded.sse_chunk) == (event.ws, event.sse_chunk)


def test_join_and_leave_carry_no_text() -> None:
    for kind in KINDS[:2]:
        event = Event.create("lobby", Position("e1", 1), kind, "bob", 5)
        wire = orjson.loads(event.data)
        assert "text" not in wire
        assert wire["type"] == kind
        assert event.text is None


def test_decode_rebuilds_the_event_and_keeps_its_bytes() -> None:
    event = Event.create("r", Position("e1", 7), "message", "Zoë", 99, '<b>"quoted"</b> 😀')
    again = Event.decode(event.data)
    assert again == event
    assert again.data is event.data
    assert again.text == '<b>"quoted"</b> 😀'


def test_decode_refuses_a_malformed_id() -> None:
    data = orjson.dumps(
        {"id": "not an id", "room": "r", "type": "message", "user": "u", "timestamp": 1}
    )
    with pytest.raises(ValueError, match="malformed id"):
        Event.decode(data)


@given(
    positions,
    st.sampled_from(KINDS),
    st.text(min_size=1, max_size=20),
    st.integers(min_value=0, max_value=2**53),
    st.text(max_size=50),
)
def test_create_then_decode_round_trips(
    position: Position, kind: EventType, user: str, timestamp: int, text: str
) -> None:
    event = Event.create(
        "room", position, kind, user, timestamp, text if kind == "message" else None
    )
    again = Event.decode(event.data)
    assert again == event
    assert again.position == position


def test_reset_marker_names_the_oldest_retained_id() -> None:
    assert orjson.loads(encode_reset(Position("e1", 8))) == {"type": "reset", "id": "e1-8"}
    assert orjson.loads(encode_reset(None)) == {"type": "reset", "id": None}


# --- resume_from -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cursor", "expected"),
    [
        (Position("e", 10), (False, 10)),  # at the head: nothing new, no reset
        (Position("e", 7), (False, 7)),  # inside the retained range
        (Position("e", 5), (False, 5)),  # the oldest itself: resume after it
        (Position("e", 4), (False, 4)),  # just before the oldest: everything after is retained
        (Position("e", 3), (True, 4)),  # event 4 was trimmed away
        (Position("e", 0), (True, 4)),
        (Position("e", 11), (True, 4)),  # beyond the head: from a stream that is gone
        (Position("other", 7), (True, 4)),  # another epoch
    ],
)
def test_resume_from_cases(cursor: Position, expected: tuple[bool, int]) -> None:
    # the stream "e" holds offsets 5..10
    assert resume_from(cursor, "e", 5, 10) == expected


def test_resume_from_an_empty_stream_is_a_reset_from_the_start() -> None:
    assert resume_from(Position("e", 3), None, None, None) == (True, 0)
    assert resume_from(Position("e", 0), None, None, None) == (True, 0)


@given(
    cursor_epoch=st.sampled_from(["e", "f"]),
    cursor_offset=st.integers(min_value=0, max_value=60),
    oldest=st.integers(min_value=1, max_value=40),
    length=st.integers(min_value=0, max_value=20),
)
def test_resume_from_delivers_exactly_what_follows_or_says_reset(
    cursor_epoch: str, cursor_offset: int, oldest: int, length: int
) -> None:
    """Stated as outcomes: which offsets a client gets, and whether it is told of a reset."""
    head = oldest + length - 1 if length else oldest - 1
    if length == 0:
        # a stream keeps at least its newest event; model "empty" as no stream at all
        reset, after = resume_from(Position(cursor_epoch, cursor_offset), None, None, None)
        assert reset
        assert after == 0
        return
    retained = list(range(oldest, head + 1))
    reset, after = resume_from(Position(cursor_epoch, cursor_offset), "e", oldest, head)
    delivered = [o for o in retained if o > after]
    wanted = list(range(cursor_offset + 1, head + 1))
    honourable = cursor_epoch == "e" and cursor_offset <= head and set(wanted) <= set(retained)
    if honourable:
        assert not reset
        assert delivered == wanted
    else:
        assert reset
        assert delivered == retained
