"""The rules for nicknames, room names and message text (DESIGN.md).

Nicknames are 1 to 32 characters: letters of any script with their combining marks,
digits, '_', '-' and '.'. Nothing invisible: no default-ignorable code point (the
Hangul fillers, variation selectors, the combining grapheme joiner, soft hyphen, tags,
...), no bidi control, no zero-width or other format character. Two names that look
alike are one name for uniqueness: `skeleton()` is the key they share.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache
from importlib.resources import files

__all__ = [
    "MAX_NICKNAME",
    "MAX_ROOM",
    "MAX_TEXT",
    "InvalidInput",
    "skeleton",
    "validate_nickname",
    "validate_room",
    "validate_text",
]

MAX_TEXT = 2000
MAX_NICKNAME = 32
MAX_ROOM = 64

_ROOM = re.compile(r"[a-z0-9_-]{1,64}")

# Two properties of Unicode's PropList.txt (15.0), each complete. Default_Ignorable_Code_Point
# (DerivedCoreProperties.txt) is Other_Default_Ignorable_Code_Point + Cf + Variation_Selector,
# less White_Space and a few visible format characters; a nickname holds no Cf at all, so
# these two and Cf cover it (checked against DerivedCoreProperties.txt 15.0: none missed).
# Bidi_Control (all Cf too) is named apart for its own reason.
_OTHER_DEFAULT_IGNORABLE = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x2065, 0x2065),
    (0x3164, 0x3164), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0xE0000, 0xE0000),
    (0xE0002, 0xE001F), (0xE0080, 0xE00FF), (0xE01F0, 0xE0FFF),
)
_VARIATION_SELECTOR = ((0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
_BIDI_CONTROL = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


class InvalidInput(ValueError):
    """Input a client sent that breaks a rule; `field` names what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def validate_room(value: str | None) -> str:
    """Lower-case and check a room name; an absent or empty one means `lobby`."""
    if value is None or value == "":
        return "lobby"
    room = value.strip()
    # isascii first: str.lower() maps the Kelvin sign "\u212a" to an ASCII "k"
    room = room.lower() if room.isascii() else room
    if not _ROOM.fullmatch(room):
        raise InvalidInput(
            "room", "room names are 1 to 64 characters of a-z, 0-9, '_' and '-'"
        )
    return room


def _in(ranges: tuple[tuple[int, int], ...], ch: str) -> bool:
    cp = ord(ch)
    return any(low <= cp <= high for low, high in ranges)


def _invisible(ch: str) -> bool:
    """A default-ignorable, zero-width or other format character (Cf)."""
    return (
        unicodedata.category(ch) == "Cf"
        or _in(_OTHER_DEFAULT_IGNORABLE, ch)
        or _in(_VARIATION_SELECTOR, ch)
    )


def _code(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def validate_nickname(value: str | None) -> str:
    """Check a nickname and answer it NFC-normalised; InvalidInput with the reason if not.

    1 to 32 characters: letters (any script), digits, '_', '-' or '.'; a combining mark
    only right after a letter or after another mark of that letter (vowel signs,
    harakat, accents). Refused with their own reason: bidi controls, and anything
    invisible (default-ignorable, zero-width or format characters).
    """
    nick = unicodedata.normalize("NFC", (value or "").strip())
    if not nick:
        raise InvalidInput("user", "a nickname is required")
    if len(nick) > MAX_NICKNAME:
        raise InvalidInput("user", f"nicknames are at most {MAX_NICKNAME} characters")
    # in a letter: after a letter or one of its marks, where a combining mark may stand
    in_letter = False
    for ch in nick:
        if ch in _BIDI_CONTROL:
            raise InvalidInput(
                "user", f"nicknames may not hold text direction controls ({_code(ch)})"
            )
        if _invisible(ch):
            raise InvalidInput(
                "user", f"nicknames may not hold invisible or formatting characters ({_code(ch)})"
            )
        category = unicodedata.category(ch)
        if category[0] == "M":
            if not in_letter:
                raise InvalidInput(
                    "user", f"a combining mark ({_code(ch)}) must follow a letter"
                )
        elif category[0] == "L":
            in_letter = True
        elif category == "Nd" or ch in "_-.":
            in_letter = False
        else:
            raise InvalidInput(
                "user", "nicknames may hold only letters, digits, '_', '-' and '.'"
            )
    return nick


def validate_text(value: object) -> str:
    """Check message text: a string of 1 to 2000 characters after trimming."""
    if not isinstance(value, str):
        raise InvalidInput("text", "the message must be a string")
    text = value.strip()
    if not text:
        raise InvalidInput("text", "the message is empty")
    if len(text) > MAX_TEXT:
        raise InvalidInput(
            "text", f"the message is {len(text)} characters; at most {MAX_TEXT} are allowed"
        )
    if "\x00" in text:
        raise InvalidInput("text", "the message holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate (e.g. from a JSON "\ud800" escape): no UTF-8, cannot be sent
        raise InvalidInput("text", "the message is not valid Unicode text") from None
    return text


# --- skeletons: one key for names that look alike -------------------------------------

# A name reaches its skeleton in at most 3 rounds (measured over every code point); a
# bound keeps a pathological input from looping.
_MAX_ROUNDS = 16


# a mapping line of confusables.txt: "0441 ;\t0063 ;\tMA\t# ( ... ) CYRILLIC SMALL LETTER ES → ..."
_MAPPING = re.compile(r"^([0-9A-F]+)\s*;\s*([0-9A-F][0-9A-F ]*?)\s*;", re.MULTILINE)


@cache
def _confusables() -> dict[int, str]:
    """Unicode's confusables.txt (UTS #39), source code point -> prototype.

    The file is Unicode's own, unchanged (data/LICENSE-Unicode says which); read once,
    at the first skeleton (some 50 ms).
    """
    text = files("chatroom.core").joinpath("data/confusables.txt").read_text("utf-8-sig")
    return {
        int(source, 16): "".join(chr(int(cp, 16)) for cp in target.split())
        for source, target in _MAPPING.findall(text)
    }


def _fold(value: str) -> str:
    """One round: NFKC, case folding, the UTS #39 skeleton (NFD, prototypes, NFD), i -> l."""
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", value).casefold())
    return unicodedata.normalize("NFD", folded.translate(_confusables())).replace("i", "l")


@lru_cache(maxsize=4096)
def skeleton(name: str) -> str:
    """The key under which look-alike names are one name (DESIGN.md, Nicknames).

    NFKC, case folding and Unicode TS #39 confusables (each character by its
    prototype, between two NFDs), repeated until nothing changes: some prototypes are
    capitals ('0' -> 'O') that case folding takes further, so skeleton(skeleton(x)) ==
    skeleton(x). One rule is added that TS #39 cannot keep once case is folded: its
    prototype of the capital I is 'l', but case folding has made that capital an 'i'
    first; so 'i' and 'l' are one letter here, and 'paypaI' is 'paypal'.

    A key, never shown: 'victim', 'Victim', 'v\u0456ctim' (a Cyrillic i) and the
    fullwidth '\uff56\uff49\uff43\uff54\uff49\uff4d' all give 'vlctlrn'. Total on any
    string; meant for validated names.
    """
    value = name
    for _ in range(_MAX_ROUNDS):
        folded = _fold(value)
        if folded == value:
            break
        value = folded
    return value
