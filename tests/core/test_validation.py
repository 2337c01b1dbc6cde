"""core.validation: the rules of DESIGN.md for message text, nicknames and room names.

The property tests state each rule independently of the code (str.isalpha, an ASCII
set) and check that a value is accepted exactly when the rule says so.
"""

from __future__ import annotations

import string
import unicodedata

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatroom.core.validation import (
    MAX_NICKNAME,
    MAX_ROOM,
    MAX_TEXT,
    InvalidInput,
    validate_nickname,
    validate_room,
    validate_text,
)


def test_limits_are_the_documented_ones() -> None:
    assert (MAX_TEXT, MAX_NICKNAME, MAX_ROOM) == (2000, 32, 64)


def test_invalid_input_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_text("")
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "text"
    assert caught.value.reason == str(caught.value)
    assert caught.value.reason  # a readable reason, not an empty string


# --- text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hi", "hi"),
        ("  hi \n", "hi"),
        ("x" * 2000, "x" * 2000),
        ("\t" + "y" * 2000 + "   ", "y" * 2000),
        ("<script>alert(1)</script>", "<script>alert(1)</script>"),
        ("line one\nline two", "line one\nline two"),
        ("😀" * 2000, "😀" * 2000),  # characters, not bytes
    ],
)
def test_text_accepted(value: str, expected: str) -> None:
    assert validate_text(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "\n\t \u3000",  # ideographic space is whitespace too
        "x" * 2001,
        " " + "x" * 2001 + " ",
        "nul \x00 inside",
        "lone \ud800 surrogate",  # no UTF-8 encoding: cannot be stored or sent
        "\udfff",
    ],
)
def test_text_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_text(value)
    assert caught.value.field == "text"


@pytest.mark.parametrize("value", [None, 5, 1.5, b"hi", ["hi"], {"text": "hi"}, True])
def test_text_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidInput, match="string"):
        validate_text(value)


def _text_ok(value: str) -> bool:
    trimmed = value.strip()
    return 1 <= len(trimmed) <= 2000 and "\x00" not in trimmed


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
@example("\x00")
@example(" a ")
def test_text_accepted_exactly_when_1_to_2000_after_trim(value: str) -> None:
    if _text_ok(value):
        assert validate_text(value) == value.strip()
    else:
        with pytest.raises(InvalidInput):
            validate_text(value)


@settings(deadline=None)
@given(
    n=st.integers(min_value=0, max_value=2100),
    ch=st.characters(codec="utf-8").filter(lambda c: not c.isspace() and c != "\x00"),
    left=st.text(alphabet=" \t\n\r\u00a0", max_size=5),
    right=st.text(alphabet=" \t\n\r\u00a0", max_size=5),
)
def test_text_length_limit_counts_characters_after_trim(
    n: int, ch: str, left: str, right: str
) -> None:
    value = left + ch * n + right
    if 1 <= n <= 2000:
        assert validate_text(value) == ch * n
    else:
        with pytest.raises(InvalidInput):
            validate_text(value)


@given(st.text(alphabet=st.characters(categories=["Cs", "Ll", "Zs", "So"]), max_size=20))
def test_accepted_text_can_always_be_encoded(value: str) -> None:
    """Whatever passes is valid Unicode: the one-time orjson encoding must not fail later."""
    try:
        text = validate_text(value)
    except InvalidInput:
        return
    text.encode("utf-8")
    assert orjson.loads(orjson.dumps(text)) == text


# --- nicknames --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice", "alice"),
        (" alice ", "alice"),
        ("Zoë", "Zoë"),
        ("Zoe\u0308", "Zo\u00eb"),  # decomposed input is composed (NFC)
        ("李小龙", "李小龙"),
        ("Алиса", "Алиса"),
        ("محمد", "محمد"),
        ("a.b-c_d", "a.b-c_d"),
        ("user_42", "user_42"),
        ("\u0663\u0664", "\u0663\u0664"),  # Arabic-Indic digits are digits
        ("x" * 32, "x" * 32),
        ("...", "..."),
    ],
)
def test_nickname_accepted(value: str, expected: str) -> None:
    assert validate_nickname(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "x" * 33,
        "bob!",
        "a b",
        "<script>",
        "alice@example",
        "😀",
        "a\u200bb",  # zero-width space
        "a\u202eb",  # right-to-left override: no spoofing by direction marks
        "a\x00",
        "tab\there",
        "\ud800",
    ],
)
def test_nickname_refused(value: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_nickname(value)
    assert caught.value.field == "user"


def _nickname_char(ch: str) -> bool:
    return ch.isalpha() or ch.isdecimal() or ch in "_-."


nickname_alphabet = st.one_of(
    st.sampled_from(list(string.ascii_letters + string.digits + "_-. !@<>/\\'\"\t")),
    st.characters(categories=["L", "Nd", "No", "Mn", "Mc", "P", "S", "Z", "Cf"]),
)


@given(st.text(alphabet=nickname_alphabet, max_size=40))
@example("x" * 32)
@example("x" * 33)
@example(" " + "é" * 32 + " ")
def test_nickname_accepted_exactly_by_the_rule(value: str) -> None:
    nick = unicodedata.normalize("NFC", value.strip())
    if 1 <= len(nick) <= 32 and all(_nickname_char(ch) for ch in nick):
        assert validate_nickname(value) == nick
    else:
        with pytest.raises(InvalidInput):
            validate_nickname(value)


# --- rooms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "lobby"),
        ("", "lobby"),
        ("lobby", "lobby"),
        ("Lobby", "lobby"),
        ("MY-Room_2", "my-room_2"),
        (" general ", "general"),
        ("room\n", "room"),
        ("a" * 64, "a" * 64),
        ("-", "-"),
        ("0", "0"),
    ],
)
def test_room_accepted(value: str | None, expected: str) -> None:
    assert validate_room(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        " ",
        "a" * 65,
        "my room",
        "room!",
        "../etc",
        "a/b",
        "café",
        "ü",
        "\u212a",  # KELVIN SIGN lower-cases to an ASCII "k": still not a-z
        "\u0130",  # LATIN CAPITAL I WITH DOT ABOVE
        "a\nb",
    ],
)
def test_room_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_room(value)
    assert caught.value.field == "room"


ROOM_CHARS = string.ascii_letters + string.digits + "_-"


@given(
    st.one_of(
        st.text(alphabet=ROOM_CHARS + " \t.!/\u212a\u0130ßé", max_size=70),
        st.text(max_size=10),
    )
)
@example("\u212a")
@example("A" * 64)
@example("A" * 65)
def test_room_accepted_exactly_by_the_rule(value: str) -> None:
    if value == "":
        assert validate_room(value) == "lobby"
        return
    name = value.strip()
    if 1 <= len(name) <= 64 and all(ch in ROOM_CHARS for ch in name):
        assert validate_room(value) == name.lower()
    else:
        with pytest.raises(InvalidInput):
            validate_room(value)
