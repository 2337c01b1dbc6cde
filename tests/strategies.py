"""Hypothesis strategies for what a hostile client can put in a request.

Text, numbers, percent-encoded fragments, header values, cookies, JSON documents and
message texts, shared by the tests that drive the server over raw sockets. Everything
here is a value a client can send; nothing knows about the server's rules except
`valid_texts`, which makes texts the server must store exactly (DESIGN.md: 1 to 2000
characters after trimming, no NUL, valid Unicode).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from chatroom.core.validation import MAX_TEXT

__all__ = [
    "HOSTILE_ATOMS",
    "RAW_PERCENT",
    "cookie_values",
    "header_values",
    "hostile_text",
    "json_bodies",
    "numbers",
    "valid_texts",
    "wire_values",
]

# Characters and short strings that break naive handling of text.
HOSTILE_ATOMS: tuple[str, ...] = (
    "\x00", "\x01", "\x1f", "\x7f", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", " ",
    "\x85", "\xa0", "\u2028", "\u2029", "\u3000", "\ufeff",
    # zero-width and bidi controls
    "\u200b", "\u200c", "\u200d", "\u2060", "\u202e", "\u202d", "\u2066", "\u2069",
    "\u061c",
    # combining marks, alone and stacked
    "\u0301", "e\u0301", "a" + "\u0300\u0301\u0302\u0303" * 8,
    # 4-byte emoji, ZWJ sequences, flags, skin tones
    "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1eb\U0001f1f7",
    "\U0001f44d\U0001f3fd",
    # letters that change under case folding or normalization
    "\u212a", "\u0130", "\u0131", "\u00df", "\ufb01", "\uff4c\uff4f\uff42\uff42\uff59",
    # digits that are not ASCII
    "\u0663", "\u00b2", "\uff11",
    # syntax of the places text travels through
    "%", "%%", "%0", "&", "=", "+", ";", ",", "#", "?", "/", "\\", "..", "../", '"', "'",
    "<", ">", "<script>alert(1)</script>", "{{7*7}}", "${x}", "\\u0000", "\\ud800",
    "-", "_", ".", "lobby", "LOBBY", " lobby ",
    # a noncharacter and the last code point
    "\uffff", "\U0010ffff",
)

# Percent-encoded sequences that do not decode to valid UTF-8, or are not escapes.
RAW_PERCENT: tuple[bytes, ...] = (
    b"%ED%A0%80",  # a lone high surrogate, UTF-8 encoded
    b"%ED%BF%BF",  # a lone low surrogate
    b"%FF", b"%FE%FF", b"%C0%AF", b"%C0%80", b"%E0%80", b"%F4%90%80%80",
    b"%00", b"%", b"%G1", b"%%", b"%2", b"%u0041", b"%25", b"%26", b"%3D", b"%2B", b"+",
    b"%0D%0A", b"%E2%80%AE", b"%EF%BB%BF",
)


def hostile_text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Text mixing any code point (lone surrogates too) with the atoms above."""
    piece = st.one_of(
        st.sampled_from(HOSTILE_ATOMS),
        st.characters(codec=None),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.characters(max_codepoint=0x7F),
    )
    return st.lists(piece, min_size=min_size, max_size=max_size).map("".join)


def numbers() -> st.SearchStrategy[str]:
    """Things that look like numbers, or almost."""
    return st.one_of(
        st.integers(-(10**20), 10**20).map(str),
        st.sampled_from(
            [
                "0", "-0", "-1", "+1", "1.5", "1e3", "1e999", "0x10", "0o7", "NaN", "Infinity",
                " 5", "5 ", "05", "\u0663", "\u00b2", "\uff15", "1_000", "18446744073709551616",
                "9223372036854775808", "",
            ]
        ),
        st.integers(19, 6000).map(lambda n: "9" * n),
        st.integers(1, 400).map(lambda n: "0" * n + "1"),
    )


def _pct(text: str) -> bytes:
    # surrogatepass: a lone surrogate goes out as its (invalid) UTF-8 bytes, %ED%A0%80
    return quote(text.encode("utf-8", "surrogatepass"), safe="").encode("ascii")


def wire_values(extra: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[bytes]:
    """A query or form value as it goes on the wire: percent-encoded text, raw broken
    escapes, or a mix."""
    texts = st.one_of(hostile_text(), numbers(), *([extra] if extra is not None else []))
    part = st.one_of(
        texts.map(_pct),
        st.sampled_from(RAW_PERCENT),
        # unencoded but still legal in a request target
        st.text(alphabet="abcxyzABC019-_.~!$'()*,:@/?", max_size=8).map(str.encode),
    )
    return st.lists(part, max_size=4).map(b"".join)


def header_values() -> st.SearchStrategy[bytes]:
    """A header value's bytes: text in UTF-8 or Latin-1, raw bytes (control characters,
    obs-text, NUL), very long values. Never a CR or LF: that ends the header."""
    return st.one_of(
        hostile_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=40),
        st.integers(300, 9000).map(lambda n: b"a" * n),
        numbers().map(lambda t: t.encode("utf-8")),
        st.sampled_from(
            [
                b"", b" ", b"null", b"*", b",", b"close", b"keep-alive, Upgrade", b"websocket",
                b"WebSocket", b"h2c", b"13", b"8", b"14", b"dGhlIHNhbXBsZSBub25jZQ==", b"=",
                b"http://evil.example", b"https://127.0.0.1", b"http://127.0.0.1:0",
                b"http://[::1]", b"http://[", b"same-origin", b"cross-site", b"none",
                b"same-site", b"127.0.0.1", b"1.2.3.4, 5.6.7.8", b"::1", b"unknown",
                b"https", b"gopher", b"0", b"100-continue", b"bytes=0-1",
            ]
        ),
    ).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))


def cookie_values() -> st.SearchStrategy[bytes]:
    """What may follow `name=` in a Cookie header."""
    return st.one_of(
        header_values().map(lambda v: v.replace(b";", b"")),
        st.sampled_from(
            [
                b'"quoted"', b'"', b"x.y.z", b"eyJzaWQiOiJ4In0.AAAA.BBBB",
                b"eyJzaWQiOiJ4IiwidXNlciI6ImEifQ.Zz9d4g.forged-signature",
            ]
        ),
        st.integers(4000, 9000).map(lambda n: b"A" * n),
    )


_KEYS = ("message", "text", "csrf", "client_id", "room", "user", "type", "id", "__proto__")


def _json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        hostile_text(),
    )


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        _json_scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(_KEYS), hostile_text()), inner,
                            max_size=4),
        ),
        max_leaves=12,
    )


def _dump(value: Any) -> bytes:
    # the stdlib writes lone surrogates as "\ud800" escapes, as a hostile client may
    return json.dumps(value, ensure_ascii=True).encode("ascii")


def json_bodies(fields: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """A body that claims to be JSON: objects with our fields (the `fields` given, with
    hostile values added), any JSON value, deep nesting, huge numbers, broken JSON."""
    return st.one_of(
        st.tuples(fields, st.dictionaries(st.sampled_from(_KEYS), _json_values(), max_size=3))
        .map(lambda pair: _dump({**pair[1], **pair[0]})),
        _json_values().map(_dump),
        st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(1, 3000).map(lambda n: b"[" * n),
        st.integers(300, 5000).map(lambda n: b'{"message": ' + b"9" * n + b"}"),
        st.sampled_from(
            [
                b"", b"null", b"[]", b'"hi"', b"1", b"{", b"}", b'{"message": "hi",}',
                b'{"message": "\\ud800"}', b'{"message": "\\udc00x"}', b"\xef\xbb\xbf{}",
                b'{"message": "\xff"}', b"{'message': 'hi'}", b'{"message": "a\x00"}',
                b'{"message": "hi"} trailing', b'{"message": NaN}', b'{"message":"hi"}' * 3,
            ]
        ),
    )


# whitespace str.strip() takes off, as the server does
_WS = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2002\u2008\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def _valid(text: str) -> bool:
    stripped = text.strip()
    return 0 < len(stripped) <= MAX_TEXT and "\x00" not in stripped


def valid_texts() -> st.SearchStrategy[str]:
    """Texts the server must take and store, trimmed, exactly: 1 to 2000 characters
    after strip(), no NUL, no lone surrogate; whitespace of every kind around them."""
    char = st.one_of(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        st.sampled_from([a for a in HOSTILE_ATOMS if "\x00" not in a]),
    )
    body = st.one_of(
        st.lists(char, min_size=1, max_size=60).map("".join),
        # the longest there may be, in 1-, 2-, 3- and 4-byte characters
        st.sampled_from(["x", "\xe9", "\u20ac", "\U0001f600"]).map(lambda c: c * MAX_TEXT),
        st.integers(1, MAX_TEXT).map(lambda n: "y" * n),
    )
    pad = st.text(alphabet=_WS, max_size=6)
    return st.tuples(pad, body, pad).map("".join).filter(_valid)
