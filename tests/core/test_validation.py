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
    skeleton,
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
        # letters of any script, with their combining marks
        ("\u0645\u064f\u062d\u064e\u0645\u064e\u0651\u062f", None),  # vowelled Arabic
        ("\u0926\u0947\u0935\u0928\u093e\u0917\u0930\u0940", None),  # Devanagari
        ("\u0e2a\u0e21\u0e0a\u0e32\u0e22", None),  # Thai
        ("\u0e19\u0e49\u0e33", None),  # Thai with a tone mark
        ("\u0ba4\u0bae\u0bbf\u0bb4\u0bcd", None),  # Tamil, ending in a virama
        ("\u0a2a\u0a70\u0a1c\u0a3e\u0a2c\u0a40", None),  # Gurmukhi
        ("\u09ac\u09be\u0982\u09b2\u09be", None),  # Bengali
        ("\u1275\u130d\u122d\u129b", None),  # Ethiopic
        ("\u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8", None),  # Georgian
        ("\ud55c\uad6d\uc5b4", None),  # Hangul
        ("\u05e2\u05d1\u05e8\u05d9\u05ea", None),  # Hebrew
        ("\u1f08\u03b8\u03b7\u03bd\u1fb6", None),  # polytonic Greek
        ("Nguy\u1ec5n", None),
        ("\u02bb\u014clelo", None),  # the okina is a letter (Lm)
        ("e\u0301\u0323", "\u1eb9\u0301"),  # two marks on one letter, NFC
    ],
)
def test_nickname_accepted(value: str, expected: str | None) -> None:
    assert validate_nickname(value) == (value if expected is None else expected)


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


INVISIBLE = [
    "\u3164",  # HANGUL FILLER: a letter (Lo) that shows nothing
    "\u115f",  # HANGUL CHOSEONG FILLER
    "\u1160",  # HANGUL JUNGSEONG FILLER
    "\uffa0",  # HALFWIDTH HANGUL FILLER
    "\u00ad",  # SOFT HYPHEN
    "\u034f",  # COMBINING GRAPHEME JOINER: a mark, but invisible
    "\u17b4",  # KHMER VOWEL INHERENT AQ
    "\u180b",  # MONGOLIAN FREE VARIATION SELECTOR ONE
    "\u180f",  # MONGOLIAN FREE VARIATION SELECTOR FOUR
    "\u180e",  # MONGOLIAN VOWEL SEPARATOR
    "\ufe00",  # VARIATION SELECTOR-1
    "\ufe0f",  # VARIATION SELECTOR-16
    "\U000e0100",  # VARIATION SELECTOR-17
    "\u200b",  # ZERO WIDTH SPACE
    "\u200c",  # ZERO WIDTH NON-JOINER
    "\u200d",  # ZERO WIDTH JOINER
    "\u2060",  # WORD JOINER
    "\u2061",  # FUNCTION APPLICATION
    "\u2064",  # INVISIBLE PLUS
    "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (BOM)
    "\U000e0001",  # LANGUAGE TAG
    "\U000e0041",  # TAG LATIN CAPITAL LETTER A
    "\U0001bca0",  # SHORTHAND FORMAT LETTER OVERLAP
]
BIDI = [
    "\u061c",  # ARABIC LETTER MARK
    "\u200e",  # LEFT-TO-RIGHT MARK
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings, overrides
    "\u2066", "\u2067", "\u2068", "\u2069",  # isolates
]


@pytest.mark.parametrize("ch", INVISIBLE)
@pytest.mark.parametrize("where", ["alone", "inside", "after", "before"])
def test_nickname_refuses_invisible_characters(ch: str, where: str) -> None:
    value = {"alone": ch, "inside": f"vic{ch}tim", "after": f"victim{ch}", "before": f"{ch}victim"}
    with pytest.raises(InvalidInput, match="invisible") as caught:
        validate_nickname(value[where])
    assert caught.value.field == "user"
    assert f"U+{ord(ch):04X}" in caught.value.reason


@pytest.mark.parametrize("ch", BIDI)
def test_nickname_refuses_bidi_controls(ch: str) -> None:
    with pytest.raises(InvalidInput, match="direction") as caught:
        validate_nickname(f"\u0645\u062d\u0645\u062f{ch}abc")
    assert caught.value.field == "user"
    assert f"U+{ord(ch):04X}" in caught.value.reason


@pytest.mark.parametrize(
    "value",
    [
        "\u0301abc",  # a mark with no letter before it
        "1\u0301",  # on a digit
        "a_\u0301",  # on '_'
        "a-\u064e",
        "x.\u093e",
        "\u20e3",  # COMBINING ENCLOSING KEYCAP (Me)
        "1\u20e3",  # a keycap digit
    ],
)
def test_nickname_refuses_a_mark_that_follows_no_letter(value: str) -> None:
    with pytest.raises(InvalidInput, match="mark") as caught:
        validate_nickname(value)
    assert caught.value.field == "user"


# Stated from the characters' names and str methods, not from the code's tables.
def _invisible_by_name(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return (
        ("HANGUL" in name and "FILLER" in name)
        or "VARIATION SELECTOR" in name
        or "GRAPHEME JOINER" in name
        or "KHMER VOWEL INHERENT" in name
    )


def _nickname_ok(nick: str) -> bool:
    if not 1 <= len(nick) <= 32:
        return False
    after_letter = False
    for ch in nick:
        if _invisible_by_name(ch):
            return False
        if unicodedata.category(ch).startswith("M"):
            if not after_letter:
                return False
        elif ch.isalpha():
            after_letter = True
        elif ch.isdecimal() or ch in "_-.":
            after_letter = False
        else:
            return False
    return True


nickname_alphabet = st.one_of(
    st.sampled_from(list(string.ascii_letters + string.digits + "_-. !@<>/\\'\"\t")),
    st.characters(categories=["L", "Nd", "No", "Mn", "Mc", "Me", "P", "S", "Z", "Cf"]),
    st.sampled_from(INVISIBLE + BIDI),
)


@given(st.text(alphabet=nickname_alphabet, max_size=40))
@example("x" * 32)
@example("x" * 33)
@example(" " + "é" * 32 + " ")
@example("a\u0301\u0302")
@example("\u0301a")
@example("ab\u3164")
def test_nickname_accepted_exactly_by_the_rule(value: str) -> None:
    nick = unicodedata.normalize("NFC", value.strip())
    if _nickname_ok(nick):
        assert validate_nickname(value) == nick
    else:
        with pytest.raises(InvalidInput):
            validate_nickname(value)


@given(st.one_of(st.none(), st.text(), st.text(alphabet=st.characters(codec=None))))
@example("\ud800")
@example("a\udfff")
def test_nickname_validation_is_total(value: str | None) -> None:
    """Whatever a client sends, the answer is a nickname or InvalidInput, never a crash."""
    refusal: InvalidInput | None = None
    try:
        nick = validate_nickname(value)
    except InvalidInput as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.field == "user"
        assert refusal.reason
        return
    nick.encode("utf-8")
    assert skeleton(nick) == skeleton(skeleton(nick))


# --- skeletons: look-alike names are one name --------------------------------------


@pytest.mark.parametrize(
    "look_alike",
    [
        "Victim",
        "VICTIM",
        "v\u0456ctim",  # CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I
        "\uff56\uff49\uff43\uff54\uff49\uff4d",  # fullwidth
        "\U0001d42f\U0001d422\U0001d41c\U0001d42d\U0001d422\U0001d426",  # math bold
        "vict\u0131m",  # dotless i
        "v\u0131ct\u0131m",
        "\u0475ictim",  # CYRILLIC SMALL LETTER IZHITSA
        "victirn",  # rn looks like m
        "vIctim",  # a capital I is an l is an i
        "v1ctim",
        "vlctim",
    ],
)
def test_look_alikes_share_a_skeleton(look_alike: str) -> None:
    assert validate_nickname(look_alike) == look_alike
    assert skeleton(look_alike) == skeleton("victim")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("paypal", "paypaI"),
        ("oscar", "0scar"),
        ("Oscar", "0SCAR"),
        ("strasse", "Stra\u00dfe"),
        ("zoe\u0308", "Zo\u00eb"),
        ("\u0430lice", "alice"),  # Cyrillic a
        ("\u03bd\u03b9\u03ba\u03b7", "\u039d\u0399\u039a\u0397"),  # Greek, by case
        ("\u0645\u062d\u0645\u062f", "\ufee3\ufea4\ufee3\ufeaa"),  # Arabic presentation forms
    ],
)
def test_names_that_look_alike_are_one_name(a: str, b: str) -> None:
    assert skeleton(a) == skeleton(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("alice", "bob"),
        ("victim", "victor"),
        ("anna", "hanna"),
        ("\u0645\u062d\u0645\u062f", "\u0623\u062d\u0645\u062f"),  # Muhammad, Ahmad
        ("\u674e", "\u5b50"),
        ("a", "b"),
    ],
)
def test_names_that_differ_keep_their_own_skeleton(a: str, b: str) -> None:
    assert skeleton(a) != skeleton(b)


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(codec=None), max_size=40))
@example("0")
@example("\u2126")  # OHM SIGN: a capital that folds to omega
@example("\u0390")  # case-folds to three code points
@example("\u00a5\u0300")
def test_skeleton_is_idempotent(value: str) -> None:
    once = skeleton(value)
    assert skeleton(once) == once


@given(st.text(alphabet=nickname_alphabet, min_size=1, max_size=32))
def test_the_skeleton_of_any_valid_nickname_is_a_fixed_point(value: str) -> None:
    try:
        nick = validate_nickname(value)
    except InvalidInput:
        return
    once = skeleton(nick)
    assert once
    assert skeleton(once) == once


@given(st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=32))
def test_case_never_tells_two_names_apart(value: str) -> None:
    assert skeleton(value.upper()) == skeleton(value.lower()) == skeleton(value)


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
