"""The rules for nicknames, room names and message text (DESIGN.md)."""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "MAX_NICKNAME",
    "MAX_ROOM",
    "MAX_TEXT",
    "InvalidInput",
    "validate_nickname",
    "validate_room",
    "validate_text",
]

MAX_TEXT = 2000
MAX_NICKNAME = 32
MAX_ROOM = 64

_ROOM = re.compile(r"[a-z0-9_-]{1,64}")


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


def _nickname_char(ch: str) -> bool:
    if ch in "_-.":
        return True
    category = unicodedata.category(ch)
    return category.startswith("L") or category == "Nd"


def validate_nickname(value: str | None) -> str:
    """Check a nickname: 1 to 32 letters (any script), digits, '_', '-' or '.'."""
    nick = unicodedata.normalize("NFC", (value or "").strip())
    if not nick:
        raise InvalidInput("user", "a nickname is required")
    if len(nick) > MAX_NICKNAME:
        raise InvalidInput("user", f"nicknames are at most {MAX_NICKNAME} characters")
    if not all(_nickname_char(ch) for ch in nick):
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
