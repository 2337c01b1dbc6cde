"""core.websocket: the handshake key, client frames in (masked, fragmented, split
anywhere), the protocol errors and their close codes, and the frames the server sends.

Client frames are built here by `client_frame`, independently of the parser: a plain
byte-by-byte XOR with a random 4-byte mask, and the length in the shortest form unless
a test asks for another.
"""

from __future__ import annotations

import base64
import tracemalloc

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatroom.bench.wire import mask_frame
from chatroom.core.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    ProtocolError,
    accept_key,
    close_frame,
    control_frame,
    parse_close,
)
from tests.support import client_frame, frame_header

Output = list[tuple[int, str | bytes]]

LIMIT = 1 << 20


def text(message: str) -> bytes:
    """A whole text message in one frame."""
    return client_frame(message.encode())


def printable(size: int) -> bytes:
    """`size` bytes of printable ASCII, every value in turn (so a wrong mask byte shows)."""
    return (bytes(range(32, 127)) * (size // 95 + 1))[:size]


def feed_once(data: bytes, max_message: int = LIMIT) -> Output:
    return FrameParser(max_message).feed(data)


def feed_bytewise(data: bytes, max_message: int = LIMIT) -> Output:
    parser = FrameParser(max_message)
    out: Output = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return out


def feed_bytewise_until_refused(data: bytes, max_message: int) -> tuple[Output, ProtocolError]:
    """What a byte-at-a-time parser returned before it refused the stream, and why."""
    parser = FrameParser(max_message)
    out: Output = []
    for i in range(len(data)):
        try:
            out += parser.feed(data[i : i + 1])
        except ProtocolError as error:
            return out, error
    raise AssertionError("the stream was not refused")


def refused(data: bytes, max_message: int = LIMIT) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        FrameParser(max_message).feed(data)
    return caught.value


# --- accept_key ------------------------------------------------------------------


def test_accept_key_of_the_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_accept_key_of_a_second_known_handshake() -> None:
    assert accept_key("x3JJHMbDL1EzLkh9GBhXDw==") == "HSmrc0sMlYUkAGmm5OPpG2HaGWk="


def test_accept_key_ignores_whitespace_around_the_key() -> None:
    assert accept_key("  dGhlIHNhbXBsZSBub25jZQ==\t") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    "key",
    [
        "",
        "   ",
        "not base64!",
        "dGhlIHNhbXBsZSBub25jZQ",  # the example without its padding
        "dGhlIHNhbXBs ZSBub25jZQ==",  # a space inside
        "dGhlIHNhbXBsZSBub25jZQ==\x00",
        "dGhlIHNhbXBsZSBub25jZQ==AAAA",  # data after the padding
        "dGhlIHNhbXBsZSBub25jZ\u00e9==",  # not ASCII
        "YWFhYWFhYWFhYWFhYWFh",  # 15 bytes
        "YWFhYWFhYWFhYWFhYWFhYWE=",  # 17 bytes
        "AAAA",  # 3 bytes
        base64.b64encode(bytes(32)).decode(),
    ],
)
def test_accept_key_refuses_anything_but_16_bytes_of_base64(key: str) -> None:
    assert accept_key(key) is None


@given(st.binary(min_size=16, max_size=16))
def test_accept_key_answers_every_16_byte_key_with_a_sha1_digest(raw: bytes) -> None:
    answer = accept_key(base64.b64encode(raw).decode())
    assert answer is not None
    assert len(base64.b64decode(answer, validate=True)) == 20


@given(st.binary(max_size=40).filter(lambda raw: len(raw) != 16))
def test_accept_key_refuses_every_other_length(raw: bytes) -> None:
    assert accept_key(base64.b64encode(raw).decode()) is None


# --- frames in: the basics -----------------------------------------------------------


def test_rfc_6455_masked_hello() -> None:
    # section 5.7: a single-frame masked text message
    data = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert feed_once(data) == [(OP_TEXT, "Hello")]


def test_rfc_6455_masked_pong() -> None:
    # section 5.7: a masked Pong carrying "Hello"
    data = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert feed_once(data) == [(OP_PONG, b"Hello")]


def test_rfc_6455_hello_unmasked_is_refused() -> None:
    error = refused(bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]))
    assert error.code == 1002


def test_rfc_6455_fragmented_hello() -> None:
    # section 5.7's two fragments, masked as a client must
    data = client_frame(b"Hel", OP_TEXT, fin=False) + client_frame(b"lo", OP_CONTINUATION)
    assert data[0] == 0x01
    assert feed_once(data) == [(OP_TEXT, "Hello")]


def test_an_empty_text_message() -> None:
    assert feed_once(text("")) == [(OP_TEXT, "")]


def test_text_is_returned_as_str_and_control_payloads_as_bytes() -> None:
    data = (
        text("h\u00e9 \U0001f600")
        + client_frame(b"", OP_PING)
        + client_frame(b"\x00\xff", OP_PING)
        + client_frame(b"pong", OP_PONG)
        + client_frame(b"\x03\xe8bye", OP_CLOSE)
    )
    out = feed_once(data)
    assert out == [
        (OP_TEXT, "h\u00e9 \U0001f600"),
        (OP_PING, b""),
        (OP_PING, b"\x00\xff"),
        (OP_PONG, b"pong"),
        (OP_CLOSE, b"\x03\xe8bye"),
    ]
    assert [type(payload) for _, payload in out] == [str, bytes, bytes, bytes, bytes]


@given(st.binary(max_size=125), st.binary(min_size=4, max_size=4))
@example(bytes(range(125)), b"\x00\x00\x00\x00")
@example(bytes(range(125)), b"\xff\x80\x01\x7f")
def test_any_mask_is_removed_at_every_offset(payload: bytes, mask: bytes) -> None:
    assert feed_once(client_frame(payload, OP_PING, mask=mask)) == [(OP_PING, payload)]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 1000, 65535, 65536])
def test_frames_agree_with_the_bench_client(size: int) -> None:
    payload = printable(size)
    ours = client_frame(payload)
    bench = mask_frame(payload)
    head = len(frame_header(OP_TEXT, size))
    assert len(bench) == len(ours)
    assert bench[:head] == ours[:head]
    assert feed_once(bench) == feed_once(ours) == [(OP_TEXT, payload.decode())]


# --- frames in: split anywhere -------------------------------------------------------


def _mixed_stream() -> tuple[bytes, Output]:
    """Frames of every length form, fragments and interleaved control frames."""
    long16 = "\u20ac" * 100  # 300 bytes: the 16-bit length form
    frames = [
        text("hi"),
        client_frame(b"", OP_PING),
        client_frame("fr\u00e9".encode()[:3], OP_TEXT, fin=False),
        client_frame(b"ping!", OP_PING),
        client_frame("fr\u00e9".encode()[3:], OP_CONTINUATION, fin=False),
        client_frame(b"", OP_PONG),
        client_frame(b"!", OP_CONTINUATION),
        text(long16),
        text("x" * 125),
        client_frame(b"\x03\xe8", OP_CLOSE),
    ]
    expected: Output = [
        (OP_TEXT, "hi"),
        (OP_PING, b""),
        (OP_PING, b"ping!"),
        (OP_PONG, b""),
        (OP_TEXT, "fr\u00e9!"),
        (OP_TEXT, long16),
        (OP_TEXT, "x" * 125),
        (OP_CLOSE, b"\x03\xe8"),
    ]
    return b"".join(frames), expected


def test_several_frames_in_one_feed() -> None:
    data, expected = _mixed_stream()
    assert feed_once(data) == expected


def test_one_byte_at_a_time_gives_the_same_result() -> None:
    data, expected = _mixed_stream()
    assert feed_bytewise(data) == expected


def test_every_split_into_two_feeds_gives_the_same_result() -> None:
    data, expected = _mixed_stream()
    for cut in range(len(data) + 1):
        parser = FrameParser(LIMIT)
        assert parser.feed(data[:cut]) + parser.feed(data[cut:]) == expected, cut


def test_a_frame_is_returned_only_when_its_last_byte_arrives() -> None:
    frames = [text("one"), client_frame(b"p", OP_PING), text("two" * 50), text("")]
    ends = []
    total = 0
    for frame in frames:
        total += len(frame)
        ends.append(total)
    data = b"".join(frames)
    parser = FrameParser(LIMIT)
    seen = {}
    for i in range(len(data)):
        out = parser.feed(data[i : i + 1])
        if out:
            seen[i + 1] = out
    assert seen == {
        ends[0]: [(OP_TEXT, "one")],
        ends[1]: [(OP_PING, b"p")],
        ends[2]: [(OP_TEXT, "two" * 50)],
        ends[3]: [(OP_TEXT, "")],
    }


def test_feeding_nothing_returns_nothing_and_keeps_a_partial_frame() -> None:
    parser = FrameParser(LIMIT)
    frame = text("hello")
    assert parser.feed(b"") == []
    assert parser.feed(frame[:4]) == []
    assert parser.feed(b"") == []
    assert parser.feed(frame[4:] + frame[:1]) == [(OP_TEXT, "hello")]
    assert parser.feed(frame[1:]) == [(OP_TEXT, "hello")]


# --- frames in: the three length forms -------------------------------------------------


@pytest.mark.parametrize(
    ("size", "length_byte", "extended"),
    [
        (0, 0, b""),
        (1, 1, b""),
        (125, 125, b""),
        (126, 126, b"\x00\x7e"),
        (127, 126, b"\x00\x7f"),
        (65535, 126, b"\xff\xff"),
        (65536, 127, b"\x00\x00\x00\x00\x00\x01\x00\x00"),
        (70000, 127, (70000).to_bytes(8, "big")),
    ],
)
def test_lengths_in_every_form_and_at_their_boundaries(
    size: int, length_byte: int, extended: bytes
) -> None:
    payload = printable(size)
    frame = client_frame(payload)
    assert frame[1] == 0x80 | length_byte
    assert frame[2 : 2 + len(extended)] == extended
    head = 2 + len(extended) + 4
    assert len(frame) == head + size
    assert feed_once(frame) == [(OP_TEXT, payload.decode())]
    # the header and mask one byte at a time, then the rest (the last mask byte, the
    # payload) at once
    parser = FrameParser(LIMIT)
    for i in range(head - 1):
        assert parser.feed(frame[i : i + 1]) == []
    assert parser.feed(frame[head - 1 :]) == [(OP_TEXT, payload.decode())]


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536])
def test_a_longer_length_form_than_needed_is_read_right(size: int) -> None:
    # RFC 6455 5.2 asks senders for the shortest form; the parser reads any form
    for form in (126, 127):
        if form == 126 and size > 65535:
            continue
        payload = b"y" * size
        frame = client_frame(payload, form=form)
        assert frame[1] == 0x80 | form
        assert feed_once(frame) == [(OP_TEXT, payload.decode())]


# --- frames in: fragmented messages ------------------------------------------------------


def test_fragments_are_joined_into_one_message() -> None:
    data = (
        client_frame(b"Hel", OP_TEXT, fin=False)
        + client_frame(b"lo, ", OP_CONTINUATION, fin=False)
        + client_frame(b"", OP_CONTINUATION, fin=False)
        + client_frame(b"world", OP_CONTINUATION)
    )
    assert feed_once(data) == [(OP_TEXT, "Hello, world")]
    assert feed_bytewise(data) == [(OP_TEXT, "Hello, world")]


def test_fragments_that_are_all_empty_make_an_empty_message() -> None:
    data = client_frame(b"", OP_TEXT, fin=False) + client_frame(b"", OP_CONTINUATION)
    assert feed_once(data) == [(OP_TEXT, "")]


def test_control_frames_between_fragments_come_in_order_before_the_message() -> None:
    data = (
        client_frame(b"a", OP_PING)
        + client_frame(b"one ", OP_TEXT, fin=False)
        + client_frame(b"b", OP_PING)
        + client_frame(b"two ", OP_CONTINUATION, fin=False)
        + client_frame(b"c", OP_PONG)
        + client_frame(b"d", OP_PING)
        + client_frame(b"three", OP_CONTINUATION)
        + client_frame(b"e", OP_PING)
        + text("next")
    )
    expected: Output = [
        (OP_PING, b"a"),
        (OP_PING, b"b"),
        (OP_PONG, b"c"),
        (OP_PING, b"d"),
        (OP_TEXT, "one two three"),
        (OP_PING, b"e"),
        (OP_TEXT, "next"),
    ]
    assert feed_once(data) == expected
    assert feed_bytewise(data) == expected


def test_a_close_between_fragments_is_returned_at_once() -> None:
    parser = FrameParser(LIMIT)
    assert parser.feed(client_frame(b"half", OP_TEXT, fin=False)) == []
    assert parser.feed(client_frame(b"\x03\xe9", OP_CLOSE)) == [(OP_CLOSE, b"\x03\xe9")]


def test_a_message_completes_in_a_later_feed() -> None:
    parser = FrameParser(LIMIT)
    first = client_frame(b"to be ", OP_TEXT, fin=False) + client_frame(b"?", OP_PING)
    assert parser.feed(first) == [(OP_PING, b"?")]
    assert parser.feed(client_frame(b"continued", OP_CONTINUATION)) == [
        (OP_TEXT, "to be continued")
    ]
    # and the next message starts afresh
    assert parser.feed(text("again")) == [(OP_TEXT, "again")]


@pytest.mark.parametrize("char", ["\u00e9", "\u20ac", "\U0001f600"])
def test_a_character_split_across_fragments_is_accepted(char: str) -> None:
    encoded = ("a" + char + "b").encode()
    for cut in range(2, len(encoded) - 1):  # every cut inside the character
        data = client_frame(encoded[:cut], OP_TEXT, fin=False) + client_frame(
            encoded[cut:], OP_CONTINUATION
        )
        assert feed_once(data) == [(OP_TEXT, "a" + char + "b")], cut


def test_a_character_split_over_three_fragments_with_a_ping_inside() -> None:
    encoded = "\U0001f600".encode()
    data = (
        client_frame(encoded[:1], OP_TEXT, fin=False)
        + client_frame(encoded[1:2], OP_CONTINUATION, fin=False)
        + client_frame(b"", OP_PING)
        + client_frame(encoded[2:], OP_CONTINUATION)
    )
    assert feed_once(data) == [(OP_PING, b""), (OP_TEXT, "\U0001f600")]


# --- invalid UTF-8: 1007 --------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"\x80",  # a continuation byte alone
        b"abc\xc3",  # cut short at the end
        b"\xc3(",  # a lead byte followed by ASCII
        b"\xc0\xaf",  # overlong "/"
        b"\xe0\x80\xaf",  # overlong, three bytes
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xf8\x88\x80\x80\x80",  # five-byte form
    ],
)
def test_invalid_utf8_is_refused_with_1007(payload: bytes) -> None:
    error = refused(client_frame(payload))
    assert error.code == 1007
    assert error.reason


def test_invalid_utf8_across_fragments_is_refused_with_1007() -> None:
    # each fragment would pass alone as far as it goes; together they are not UTF-8
    data = client_frame(b"ok \xe2\x82", OP_TEXT, fin=False) + client_frame(b"!", OP_CONTINUATION)
    assert refused(data).code == 1007


def test_a_message_ending_inside_a_character_is_refused_with_1007() -> None:
    data = client_frame(b"a\xf0\x9f", OP_TEXT, fin=False) + client_frame(b"\x98", OP_CONTINUATION)
    assert refused(data).code == 1007


def test_a_ping_payload_need_not_be_utf8() -> None:
    assert feed_once(client_frame(b"\xff\xfe", OP_PING)) == [(OP_PING, b"\xff\xfe")]


# --- the size limit: 1009 -------------------------------------------------------------


def test_a_message_exactly_at_the_limit_is_accepted() -> None:
    assert feed_once(text("x" * 10), max_message=10) == [(OP_TEXT, "x" * 10)]


def test_a_message_one_byte_over_the_limit_is_refused_with_1009() -> None:
    error = refused(text("x" * 11), max_message=10)
    assert error.code == 1009
    assert "10" in error.reason


def test_the_limit_counts_bytes_not_characters() -> None:
    assert feed_once(text("\u00e9" * 5), max_message=10) == [(OP_TEXT, "\u00e9" * 5)]
    assert refused(text("\u00e9" * 6), max_message=10).code == 1009


def test_the_limit_is_counted_across_fragments() -> None:
    at_limit = (
        client_frame(b"abcd", OP_TEXT, fin=False)
        + client_frame(b"efg", OP_CONTINUATION, fin=False)
        + client_frame(b"hij", OP_CONTINUATION)
    )
    assert feed_once(at_limit, max_message=10) == [(OP_TEXT, "abcdefghij")]
    over = (
        client_frame(b"abcd", OP_TEXT, fin=False)
        + client_frame(b"efg", OP_CONTINUATION, fin=False)
        + client_frame(b"hijk", OP_CONTINUATION)
    )
    assert refused(over, max_message=10).code == 1009


def test_control_frames_between_fragments_do_not_count_toward_the_limit() -> None:
    data = (
        client_frame(b"12345", OP_TEXT, fin=False)
        + client_frame(b"p" * 125, OP_PING)
        + client_frame(b"67890", OP_CONTINUATION)
    )
    assert feed_once(data, max_message=10) == [(OP_PING, b"p" * 125), (OP_TEXT, "1234567890")]


def test_each_message_has_the_whole_limit() -> None:
    data = (
        text("a" * 10)
        + client_frame(b"b" * 6, OP_TEXT, fin=False)
        + client_frame(b"b" * 4, OP_CONTINUATION)
        + text("c" * 10)
    )
    assert feed_once(data, max_message=10) == [
        (OP_TEXT, "a" * 10),
        (OP_TEXT, "b" * 10),
        (OP_TEXT, "c" * 10),
    ]


@pytest.mark.parametrize("length", [11, 126, 65535, 65536, 2**40, 2**63 - 1])
def test_a_big_frame_is_refused_from_its_header_alone(length: int) -> None:
    # no mask key, no payload: only the header has arrived
    error = refused(frame_header(OP_TEXT, length), max_message=10)
    assert error.code == 1009


def test_the_huge_header_is_refused_on_its_last_byte_not_before() -> None:
    head = frame_header(OP_TEXT, 2**40)
    assert len(head) == 10
    parser = FrameParser(1000)
    for i in range(9):
        assert parser.feed(head[i : i + 1]) == []
    with pytest.raises(ProtocolError) as caught:
        parser.feed(head[9:])
    assert caught.value.code == 1009


def test_a_later_fragment_over_the_limit_is_refused_from_its_header() -> None:
    parser = FrameParser(100)
    assert parser.feed(client_frame(b"x" * 60, OP_TEXT, fin=False)) == []
    assert parser.feed(client_frame(b"b", OP_PING)) == [(OP_PING, b"b")]
    with pytest.raises(ProtocolError) as caught:
        parser.feed(frame_header(OP_CONTINUATION, 41))
    assert caught.value.code == 1009


def test_a_later_fragment_that_reaches_the_limit_exactly_is_accepted() -> None:
    parser = FrameParser(100)
    assert parser.feed(client_frame(b"x" * 60, OP_TEXT, fin=False)) == []
    assert parser.feed(client_frame(b"y" * 40, OP_CONTINUATION)) == [(OP_TEXT, "x" * 60 + "y" * 40)]


# --- protocol violations ----------------------------------------------------------------


def test_a_binary_frame_is_refused_with_1003() -> None:
    assert refused(client_frame(b"\x00\x01", OP_BINARY)).code == 1003


def test_a_binary_first_fragment_is_refused_with_1003_from_its_header() -> None:
    assert refused(frame_header(OP_BINARY, 5, fin=False)).code == 1003


UNMASKED = [
    ("text", client_frame(b"hi", OP_TEXT, masked=False)),
    ("empty text", client_frame(b"", OP_TEXT, masked=False)),
    ("ping", client_frame(b"", OP_PING, masked=False)),
    ("close", client_frame(b"\x03\xe8", OP_CLOSE, masked=False)),
    ("16-bit", client_frame(b"z" * 200, OP_TEXT, masked=False)),
]


@pytest.mark.parametrize("data", [d for _, d in UNMASKED], ids=[n for n, _ in UNMASKED])
def test_an_unmasked_frame_is_refused_with_1002(data: bytes) -> None:
    error = refused(data)
    assert error.code == 1002
    assert "mask" in error.reason


def test_an_unmasked_continuation_is_refused_with_1002() -> None:
    parser = FrameParser(LIMIT)
    assert parser.feed(client_frame(b"a", OP_TEXT, fin=False)) == []
    with pytest.raises(ProtocolError) as caught:
        parser.feed(client_frame(b"b", OP_CONTINUATION, masked=False))
    assert caught.value.code == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_PING, OP_CLOSE])
def test_reserved_bits_are_refused_with_1002(rsv: int, opcode: int) -> None:
    error = refused(client_frame(b"", opcode, rsv=rsv))
    assert error.code == 1002
    assert "reserved" in error.reason


def test_reserved_bits_on_a_continuation_are_refused_with_1002() -> None:
    data = client_frame(b"a", OP_TEXT, fin=False) + client_frame(b"b", OP_CONTINUATION, rsv=0x40)
    assert refused(data).code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_an_unknown_opcode_is_refused_with_1002(opcode: int) -> None:
    error = refused(client_frame(b"x", opcode))
    assert error.code == 1002
    assert f"{opcode:#x}" in error.reason


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_an_unknown_opcode_inside_a_message_is_refused_with_1002(opcode: int) -> None:
    data = client_frame(b"a", OP_TEXT, fin=False) + client_frame(b"x", opcode)
    assert refused(data).code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_a_fragmented_control_frame_is_refused_with_1002(opcode: int) -> None:
    assert refused(client_frame(b"x", opcode, fin=False)).code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
@pytest.mark.parametrize(("length", "form"), [(126, None), (65536, None), (126, 127)])
def test_a_control_frame_over_125_bytes_is_refused_with_1002_from_its_header(
    opcode: int, length: int, form: int | None
) -> None:
    error = refused(frame_header(opcode, length, form=form))
    assert error.code == 1002
    assert "125" in error.reason


def test_a_control_frame_of_125_bytes_is_accepted() -> None:
    assert feed_once(client_frame(b"p" * 125, OP_PING)) == [(OP_PING, b"p" * 125)]


def test_a_continuation_with_no_message_is_refused_with_1002() -> None:
    assert refused(client_frame(b"x", OP_CONTINUATION)).code == 1002
    assert refused(client_frame(b"x", OP_CONTINUATION, fin=False)).code == 1002


def test_a_continuation_after_a_finished_message_is_refused_with_1002() -> None:
    parser = FrameParser(LIMIT)
    assert parser.feed(
        client_frame(b"a", OP_TEXT, fin=False) + client_frame(b"b", OP_CONTINUATION)
    ) == [(OP_TEXT, "ab")]
    with pytest.raises(ProtocolError) as caught:
        parser.feed(client_frame(b"c", OP_CONTINUATION))
    assert caught.value.code == 1002


@pytest.mark.parametrize("fin", [True, False])
def test_a_new_text_frame_inside_a_fragmented_message_is_refused_with_1002(fin: bool) -> None:
    data = (
        client_frame(b"a", OP_TEXT, fin=False)
        + client_frame(b"p", OP_PING)
        + client_frame(b"b", OP_TEXT, fin=fin)
    )
    error = refused(data)
    assert error.code == 1002
    assert "inside" in error.reason


def test_a_binary_frame_inside_a_fragmented_message_is_refused_with_1003() -> None:
    data = client_frame(b"a", OP_TEXT, fin=False) + client_frame(b"b", OP_BINARY)
    assert refused(data).code == 1003


@pytest.mark.parametrize("length", [2**63, 2**63 + 5, 2**64 - 1])
def test_a_64_bit_length_with_the_top_bit_set_is_refused_with_1002(length: int) -> None:
    # a limit that would not refuse it, so the length itself is what is refused
    error = refused(frame_header(OP_TEXT, length), max_message=2**65)
    assert error.code == 1002


def test_the_largest_64_bit_length_waits_for_its_payload() -> None:
    assert FrameParser(2**65).feed(frame_header(OP_TEXT, 2**63 - 1) + b"\x01\x02\x03\x04") == []


# every violation, refused whether the stream comes at once or a byte at a time
VIOLATIONS = [
    ("binary", client_frame(b"b", OP_BINARY), 1003),
    ("unmasked", client_frame(b"u", masked=False), 1002),
    ("rsv1", client_frame(b"r", rsv=0x40), 1002),
    ("opcode 0x3", client_frame(b"", 0x3), 1002),
    ("opcode 0xb", client_frame(b"", 0xB), 1002),
    ("fragmented ping", client_frame(b"", OP_PING, fin=False), 1002),
    ("long ping", frame_header(OP_PING, 126), 1002),
    ("orphan continuation", client_frame(b"c", OP_CONTINUATION), 1002),
    (
        "text inside a message",
        client_frame(b"a", fin=False) + client_frame(b"b"),
        1002,
    ),
    ("top bit", frame_header(OP_TEXT, 2**63), 1002),
    ("invalid UTF-8", client_frame(b"\xc3\x28"), 1007),
    ("too big", frame_header(OP_TEXT, 101), 1009),
    (
        "too big in fragments",
        client_frame(b"a" * 60, fin=False) + frame_header(OP_CONTINUATION, 41),
        1009,
    ),
]


@pytest.mark.parametrize(
    ("data", "code"), [(d, c) for _, d, c in VIOLATIONS], ids=[n for n, _, _ in VIOLATIONS]
)
def test_a_violation_is_refused_however_the_bytes_arrive(data: bytes, code: int) -> None:
    prefix = text("fine") + client_frame(b"p", OP_PING)
    at_once = refused(prefix + data, max_message=100)
    assert at_once.code == code
    # what came before the violation in the same feed rides on the error
    assert at_once.frames == [(OP_TEXT, "fine"), (OP_PING, b"p")]
    out, error = feed_bytewise_until_refused(prefix + data, max_message=100)
    assert error.code == code
    # fed a byte at a time, it was returned before the violation arrived
    assert out == [(OP_TEXT, "fine"), (OP_PING, b"p")]
    assert error.frames == []


def test_protocol_error_carries_its_code_and_reason() -> None:
    error = ProtocolError(1002, "why")
    assert isinstance(error, Exception)
    assert (error.code, error.reason, str(error)) == (1002, "why", "why")


# --- parse_close ------------------------------------------------------------------------


def test_parse_close_of_an_empty_payload_has_no_code() -> None:
    assert parse_close(b"") == (None, "")


def test_parse_close_refuses_a_one_byte_payload_with_1002() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_close(b"\x03")
    assert caught.value.code == 1002


# the registered codes a peer may send, and the ranges for libraries (3xxx) and apps (4xxx)
SENDABLE = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]


@pytest.mark.parametrize("code", [*SENDABLE, 3000, 3999, 4000, 4999])
def test_parse_close_accepts_the_codes_a_peer_may_send(code: int) -> None:
    assert parse_close(code.to_bytes(2, "big")) == (code, "")
    assert parse_close(code.to_bytes(2, "big") + b"bye") == (code, "bye")


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_parse_close_refuses_codes_never_sent_with_1002(code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_close(code.to_bytes(2, "big"))
    assert caught.value.code == 1002
    assert str(code) in caught.value.reason


def test_parse_close_reads_a_utf8_reason() -> None:
    reason = "au revoir \u00e9 \U0001f44b"
    assert parse_close(b"\x03\xe8" + reason.encode()) == (1000, reason)


@pytest.mark.parametrize("tail", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_parse_close_refuses_an_invalid_utf8_reason_with_1007(tail: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_close(b"\x03\xe8" + tail)
    assert caught.value.code == 1007


def test_a_client_close_frame_parses_through_both_steps() -> None:
    [(opcode, payload)] = feed_once(client_frame(b"\x0f\xa0going away", OP_CLOSE))
    assert opcode == OP_CLOSE
    assert isinstance(payload, bytes)
    assert parse_close(payload) == (4000, "going away")


# --- frames out: control_frame and close_frame -------------------------------------------


def test_control_frame_is_one_final_unmasked_frame() -> None:
    assert control_frame(OP_PONG) == b"\x8a\x00"
    assert control_frame(OP_PING, b"hi") == b"\x89\x02hi"
    assert control_frame(OP_PING, b"p" * 125) == b"\x89\x7d" + b"p" * 125


@pytest.mark.parametrize("size", [126, 127, 1000])
def test_control_frame_refuses_more_than_125_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="125"):
        control_frame(OP_PING, b"p" * size)


def test_close_frame_carries_the_code_then_the_reason() -> None:
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(1009, "too big") == b"\x88\x09\x03\xf1too big"
    assert close_frame(4000, "\u00e9") == b"\x88\x04\x0f\xa0\xc3\xa9"


@pytest.mark.parametrize(
    ("reason", "kept"),
    [
        ("a" * 123, "a" * 123),  # fits exactly
        ("a" * 124, "a" * 123),
        ("a" * 500, "a" * 123),
        ("\u00e9" * 62, "\u00e9" * 61),  # 124 bytes: the last character would be split
        ("a" + "\u00e9" * 61, "a" + "\u00e9" * 61),  # 123 bytes: fits
        ("\u20ac" * 41, "\u20ac" * 41),  # 123 bytes: fits
        ("\u20ac" * 42, "\u20ac" * 41),
        ("a" + "\u20ac" * 41, "a" + "\u20ac" * 40),  # 124 bytes: cut after 1 byte of 3
        ("ab" + "\u20ac" * 41, "ab" + "\u20ac" * 40),  # 125 bytes: cut after 2 bytes of 3
        ("\U0001f600" * 31, "\U0001f600" * 30),  # cut after 3 bytes of 4
        ("a" + "\U0001f600" * 31, "a" + "\U0001f600" * 30),  # cut after 2 bytes of 4
        ("ab" + "\U0001f600" * 31, "ab" + "\U0001f600" * 30),  # cut after 1 byte of 4
        ("abc" + "\U0001f600" * 30, "abc" + "\U0001f600" * 30),  # 123 bytes: fits
    ],
)
def test_close_frame_cuts_the_reason_to_whole_characters(reason: str, kept: str) -> None:
    frame = close_frame(1008, reason)
    assert frame[:2] == bytes((0x88, 2 + len(kept.encode())))
    assert len(frame) <= 2 + 125
    assert frame[2:] == b"\x03\xf0" + kept.encode()
    assert parse_close(frame[2:]) == (1008, kept)


@given(
    st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4999]),
    st.text(max_size=200),
)
@example(1000, "\u00e9" * 100)
@example(1000, "x" + "\U0001f600" * 40)
def test_close_frame_keeps_the_longest_whole_prefix_that_fits(code: int, reason: str) -> None:
    frame = close_frame(code, reason)
    assert frame[0] == 0x88
    assert frame[1] == len(frame) - 2 <= 125
    parsed_code, kept = parse_close(frame[2:])
    assert parsed_code == code
    assert reason.startswith(kept)
    assert len(kept.encode()) <= 123
    if kept != reason:
        # the next character would not have fitted
        assert len(kept.encode()) + len(reason[len(kept)].encode()) > 123


# --- the property: any messages, fragmented and chunked any way ----------------------------


@st.composite
def fragmented_streams(draw: st.DrawFn) -> tuple[list[str], Output, bytes]:
    """Messages, each cut into fragments at any byte (inside characters too), with
    pings and pongs between them; returns the messages, the expected output, the bytes."""
    messages = draw(st.lists(st.text(max_size=60), max_size=6))
    masks = st.binary(min_size=4, max_size=4)
    frames: list[bytes] = []
    expected: Output = []
    for message in messages:
        encoded = message.encode()
        cuts = sorted(draw(st.lists(st.integers(0, len(encoded)), max_size=4)))
        pieces = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
        for i, piece in enumerate(pieces):
            if draw(st.booleans()):
                ping = draw(st.binary(max_size=10))
                opcode = draw(st.sampled_from([OP_PING, OP_PONG]))
                frames.append(client_frame(ping, opcode, mask=draw(masks)))
                expected.append((opcode, ping))
            first, last = i == 0, i == len(pieces) - 1
            frames.append(
                client_frame(
                    piece,
                    OP_TEXT if first else OP_CONTINUATION,
                    fin=last,
                    mask=draw(masks),
                )
            )
        expected.append((OP_TEXT, message))
    return messages, expected, b"".join(frames)


@settings(deadline=None, max_examples=300)
@given(fragmented_streams(), st.data())
def test_any_fragmentation_and_chunking_returns_exactly_the_messages(
    stream: tuple[list[str], Output, bytes], data: st.DataObject
) -> None:
    messages, expected, wire = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    parser = FrameParser(1000)
    out: Output = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += parser.feed(wire[a:b])
    assert out == expected
    assert [payload for opcode, payload in out if opcode == OP_TEXT] == messages


def test_fragments_without_end_hold_their_bytes_and_no_more() -> None:
    # a message that never ends, in empty and one-byte fragments: the parser keeps
    # the bytes, not an object per fragment
    parser = FrameParser(LIMIT)
    parser.feed(client_frame(b"a", fin=False))
    empty = client_frame(b"", OP_CONTINUATION, fin=False) * 1000
    one = client_frame(b"b", OP_CONTINUATION, fin=False) * 1000
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(100):
            parser.feed(empty)
        for _ in range(10):
            parser.feed(one)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 100,000 empty and 10,000 one-byte fragments: about 10 KB of message
    assert held - before < 32 * 1024
    done = parser.feed(client_frame(b"c", OP_CONTINUATION))
    assert done == [(OP_TEXT, "a" + "b" * 10_000 + "c")]
