"""core.websocket against the `websockets` library: the same client bytes, two parsers.

Hypothesis writes what a client could send: messages in fragments (cut anywhere, inside
characters too), control frames between the fragments, masked and unmasked frames,
lengths in their 7, 16 and 64-bit forms (the longer forms for short payloads too),
reserved bits, unknown opcodes, invalid UTF-8, close frames of every shape, control
frames over 125 bytes, messages over the size limit, frames that claim more than ever
comes. The same bytes, cut into random chunks, go into our FrameParser and into
websockets' sans-I/O ServerProtocol (OPEN, with the same max_size). Both must deliver the
same text messages, pings, pongs and close (code and reason), answer pings with the
same pong frames, and refuse the stream with the same close code.

Where the two legitimately differ, `DIFFERENCES` says so, one line each, and the
harness applies exactly that rule, in the place it applies; each one is counted, and
`test_each_difference_happens` shows a stream where it does.

`CHATROOM_FUZZ_EXAMPLES` sets how many streams (default 250); the run is derandomized,
so CI sees the same streams every time.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import PayloadTooBig
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from chatroom.core.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    ProtocolError,
    close_frame,
    control_frame,
    parse_close,
)
from tests.support import frame_header

DEFAULT_EXAMPLES = 250
EXAMPLES = int(os.environ.get("CHATROOM_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))

# The places where websockets 17 and core.websocket legitimately differ, and why.
DIFFERENCES = {
    "binary": (
        "chatroom takes text only (DESIGN.md: a binary frame closes 1003); "
        "websockets delivers binary messages"
    ),
    "binary-first": (
        "a binary frame that also breaks the fragment order or the size limit: core refuses "
        "binary from the opcode first (1003), websockets checks size, then order (1009/1002); "
        "RFC 6455 does not rank the rules"
    ),
    "framing-before-size": (
        "a frame over the size limit that also breaks a framing rule (RSV bit, control frame "
        "shape, fragment order, 64-bit length with its top bit set): core judges the header's "
        "rules first (1002), websockets the size first (1009); RFC 6455 does not rank them"
    ),
    "close-code-before-reason": (
        "a close frame with an invalid code and a reason that is not UTF-8: core checks the "
        "code first (1002), websockets decodes the reason first (1007)"
    ),
    "close-inside-message": (
        "a close frame between a message's fragments: RFC 6455 5.4 allows control frames there "
        "and core takes the close (the unfinished message is dropped); websockets 17 reads the "
        "close, then fails with 1002 'incomplete fragmented message'"
    ),
    "control-outside-budget": (
        "a control frame between fragments: websockets counts it against what is left of the "
        "message's size limit (max_size - current_size); RFC 6455 5.4 keeps control frames out "
        "of the message, as core does, so the harness gives websockets the whole limit for them"
    ),
    "header-verdict": (
        "the stream ends inside a frame core refused from its header (it keeps no payload of a "
        "refused frame); websockets reads the payload before checking RSV, control shape and "
        "order: the harness completes that frame with zero bytes for websockets"
    ),
    "length-before-opcode": (
        "the stream ends inside the extended length of a frame with an unknown opcode: "
        "websockets refuses from the first byte, core reads the length field first: the "
        "harness completes that frame with zero bytes for core"
    ),
}

# the close codes a client may send (RFC 6455 7.4); both sides refuse the others
VALID_CLOSE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
VALID_CLOSE |= set(range(3000, 5000))

# An outcome: what was delivered, in order, then how the stream ended:
# ("closed", code, reason) for a valid close frame (1005: it had no code, as RFC 6455
# 7.1.5 and websockets say), ("failed", code) when the stream was refused, or None while
# both still wait for bytes.
Item = tuple[str, str | bytes]
Verdict = tuple[str, int] | tuple[str, int, str] | None


@dataclass
class Outcome:
    delivered: list[Item] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    verdict: Verdict = None


# --- the client's frames -------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One client frame, as a test writes it: any field may break a rule."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    mask: bytes = b"\x00\x00\x00\x00"
    # the length field: None for the shortest form, 126 (16 bits) or 127 (64 bits)
    form: int | None = None
    # a length the header claims, past what the payload holds (only a stream's last frame)
    declared: int | None = None

    @property
    def length(self) -> int:
        return len(self.payload) if self.declared is None else self.declared

    def head(self) -> bytes:
        head = frame_header(
            self.opcode, self.length, fin=self.fin, rsv=self.rsv, masked=self.masked, form=self.form
        )
        return head + self.mask if self.masked else head

    def wire(self) -> bytes:
        if not self.masked:
            return self.head() + self.payload
        mask = self.mask
        return self.head() + bytes(b ^ mask[i % 4] for i, b in enumerate(self.payload))

    def size(self) -> int:
        """The bytes the whole frame takes (more than wire() when it claims more)."""
        return len(self.head()) + self.length


@dataclass
class Case:
    limit: int
    specs: list[Spec]
    # the bytes sent, which may stop inside the last frame
    data: bytes
    # the chunks each read returns: cut at these offsets
    cuts: list[int]

    def chunks(self, extra: list[int] | None = None) -> list[bytes]:
        cuts = sorted({0, len(self.data), *self.cuts, *(extra or [])})
        return [self.data[a:b] for a, b in itertools.pairwise(cuts)]

    def starts(self) -> list[int]:
        """Where each frame begins in the stream."""
        starts, at = [], 0
        for spec in self.specs:
            starts.append(at)
            at += spec.size()
        return starts

    def truncated(self) -> bool:
        return sum(spec.size() for spec in self.specs) > len(self.data)

    def completed(self) -> bytes:
        """The stream with its last frame completed by zero bytes (its header only, when
        it claims more than any limit: that is judged from the header)."""
        last = self.specs[-1]
        end = self.starts()[-1] + len(last.head())
        if last.length <= 2 * self.limit:
            end += last.length
        return self.data + bytes(max(0, end - len(self.data)))


# --- core.websocket, used as the transport uses it -----------------------------------


def run_core(data: list[bytes], limit: int) -> Outcome:
    """Feed the chunks to FrameParser; take what it returns the way _Socket does: in order
    up to the first close (whose payload parse_close reads), or up to a refusal."""
    parser = FrameParser(limit)
    out = Outcome()

    def take(frames: list[tuple[int, str | bytes]]) -> bool:
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                assert isinstance(payload, str)
                out.delivered.append(("text", payload))
                continue
            assert isinstance(payload, bytes)
            if opcode == OP_PING:
                out.delivered.append(("ping", payload))
                out.pongs.append(control_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                out.delivered.append(("pong", payload))
            else:
                assert opcode == OP_CLOSE
                try:
                    code, reason = parse_close(payload)
                except ProtocolError as exc:
                    out.verdict = ("failed", exc.code)
                else:
                    out.verdict = (
                        "closed",
                        CloseCode.NO_STATUS_RCVD if code is None else code,
                        reason,
                    )
                # the transport reads nothing after a close
                return True
        return False

    for chunk in data:
        try:
            frames = parser.feed(chunk)
        except ProtocolError as exc:
            # what came before the violation is handled first, a close included
            if not take(exc.frames):
                out.verdict = ("failed", exc.code)
                check_close_frame(exc.code, exc.reason)
            return out
        if take(frames):
            return out
    return out


def check_close_frame(code: int, reason: str) -> None:
    """The close frame core sends for a refusal is one websockets reads as sent."""
    reader = StreamReader()
    reader.feed_data(close_frame(code, reason))
    with pytest.raises(StopIteration) as parsed:
        next(Frame.parse(reader.read_exact, mask=False))
    frame: Frame = parsed.value.value
    assert frame.opcode is Opcode.CLOSE
    assert not reader.buffer
    close = Close.parse(frame.data)
    assert close.code == code
    assert reason.startswith(close.reason)
    assert len(close.reason.encode()) <= 123


# --- websockets, and the differences it legitimately has -----------------------------


def violates_header(spec: Spec, in_message: bool) -> int | None:
    """The code core gives a frame from its header, rules taken in core's order; None if
    the header breaks no rule (size aside)."""
    if spec.rsv or not spec.masked or spec.length >> 63:
        return 1002
    if spec.opcode >= OP_CLOSE:
        if spec.opcode not in (OP_CLOSE, OP_PING, OP_PONG) or not spec.fin or spec.length > 125:
            return 1002
        return None
    if spec.opcode == OP_BINARY:
        return 1003
    if spec.opcode == OP_TEXT:
        # a new message inside one
        return 1002 if in_message else None
    if spec.opcode == OP_CONTINUATION:
        # a continuation of none
        return None if in_message else 1002
    return 1002


def run_websockets(case: Case, used: Counter[str]) -> Outcome:
    """Feed the same bytes to websockets' ServerProtocol; turn its frames into what core
    would deliver, applying DIFFERENCES where they apply."""
    data = case.data
    limit = case.limit
    protocol = ServerProtocol(state=OPEN, max_size=limit)
    out = Outcome()
    starts = case.starts()
    # websockets fixes a frame's size budget when the previous frame ends, so each frame
    # starts a chunk: the budget can be set for it (control-outside-budget)
    cuts = sorted({0, len(data), *(c for c in case.cuts if c <= len(data)), *starts})
    cuts = [c for c in cuts if c <= len(data)]
    message: list[bytes] | None = None
    frames_seen = 0

    def done() -> bool:
        return out.verdict is not None

    for a, b in itertools.pairwise(cuts):
        if a in starts and not done():
            spec = case.specs[starts.index(a)]
            current = protocol.current_size
            if spec.opcode >= OP_CLOSE and current is not None:
                protocol.max_message_size = limit + current
                if current + spec.length > limit >= spec.length:
                    used["control-outside-budget"] += 1
            else:
                protocol.max_message_size = limit
        protocol.receive_data(data[a:b])
        for write in protocol.data_to_send():
            if write[:1] == b"\x8a":
                out.pongs.append(bytes(write))
        for frame in protocol.events_received():
            assert isinstance(frame, Frame)
            frames_seen += 1
            if done():
                continue
            if frame.opcode is Opcode.BINARY:
                used["binary"] += 1
                out.verdict = ("failed", 1003)
            elif frame.opcode in (Opcode.TEXT, Opcode.CONT):
                if frame.opcode is Opcode.TEXT or message is None:
                    message = []
                message.append(bytes(frame.data))
                if frame.fin:
                    # as websockets' own connection does (asyncio.messages.Assembler.get)
                    try:
                        out.delivered.append(("text", b"".join(message).decode()))
                    except UnicodeDecodeError:
                        out.verdict = ("failed", 1007)
                    message = None
            elif frame.opcode is Opcode.PING:
                out.delivered.append(("ping", bytes(frame.data)))
            elif frame.opcode is Opcode.PONG:
                out.delivered.append(("pong", bytes(frame.data)))
            else:
                close = protocol.close_rcvd
                assert close is not None
                out.verdict = ("closed", close.code, close.reason)
        if protocol.parser_exc is not None:
            break

    exc = protocol.parser_exc
    if exc is not None and not done():
        assert protocol.close_sent is not None
        code = protocol.close_sent.code
        spec = case.specs[frames_seen]
        in_message = protocol.current_size is not None
        header = violates_header(spec, in_message)
        if str(exc) == "incomplete fragmented message":
            used["close-inside-message"] += 1
            close = protocol.close_rcvd
            assert close is not None
            out.verdict = ("closed", close.code, close.reason)
        elif isinstance(exc, PayloadTooBig) and header is not None:
            used["binary-first" if header == 1003 else "framing-before-size"] += 1
            out.verdict = ("failed", header)
        elif code == 1002 and header == 1003:
            used["binary-first"] += 1
            out.verdict = ("failed", 1003)
        elif isinstance(exc, UnicodeDecodeError) and spec.opcode == OP_CLOSE:
            if int.from_bytes(spec.payload[:2], "big") not in VALID_CLOSE:
                used["close-code-before-reason"] += 1
                code = 1002
            out.verdict = ("failed", code)
        else:
            out.verdict = ("failed", code)
    # the pongs websockets wrote for pings past where the harness stopped don't count
    out.pongs = out.pongs[: sum(1 for kind, _ in out.delivered if kind == "ping")]
    return out


def compare(case: Case, used: Counter[str]) -> Outcome:
    core = run_core(case.chunks(), case.limit)
    theirs = run_websockets(case, used)
    if case.truncated() and (core.verdict is None) != (theirs.verdict is None):
        # one of them judged the last frame from its header, the other waits for the rest
        completed = Case(case.limit, case.specs, case.completed(), case.cuts)
        if theirs.verdict is None:
            used["header-verdict"] += 1
            theirs = run_websockets(completed, used)
        else:
            assert case.specs[-1].opcode not in (0, 1, 2, 8, 9, 10), (case, theirs)
            used["length-before-opcode"] += 1
            core = run_core(completed.chunks(), case.limit)
    assert core == theirs, (case, core, theirs)
    return core


# --- what a client could send --------------------------------------------------------
# (strategies are built once, here: building them in each draw costs more than drawing)

BAD_UTF8 = [
    b"\x80",  # a continuation byte alone
    b"\xbf",
    b"\xc0\xaf",  # overlong "/"
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong, three bytes
    b"\xed\xa0\x80",  # a surrogate
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xfe",
    b"\xff",
    b"\xe2\x82",  # a character cut short
    b"\xf0\x9f\x98",
]
UNKNOWN_OPCODES = [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]
INVALID_CLOSE = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
CLOSE_CODES = [*sorted(VALID_CLOSE - set(range(3001, 4999))), *INVALID_CLOSE]
LIMITS = [125, 200, 1000, 16384]

texts = st.text(st.characters(codec="utf-8"), max_size=30).map(str.encode)
bad_utf8 = st.sampled_from(BAD_UTF8)
small_binary = st.binary(max_size=30)
body_kinds = st.sampled_from(["text", "text", "bytes", "bad", "near-limit", "near-limit"])
masks = st.binary(min_size=4, max_size=4)
forms = st.sampled_from([None] * 6 + [126, 127])
any_form = st.sampled_from([None, 126, 127])
FAULTS = ["rsv", "unmasked", "opcode", "fin"]
faults = st.sampled_from(["none"] * 60 + FAULTS)
# for a last frame the stream stops inside: a refusal from its header alone
last_faults = st.sampled_from(["none"] * 4 + FAULTS)
rsv_bits = st.sampled_from([0x40, 0x20, 0x10, 0x70])
unknown_opcodes = st.sampled_from(UNKNOWN_OPCODES)
one_in = {n: st.integers(0, n - 1) for n in (5, 6, 10, 20, 30)}
ping_or_pong = st.sampled_from([OP_PING, OP_PONG])
control_payloads = st.binary(max_size=125)
oversize_payloads = st.binary(min_size=126, max_size=140)
close_kinds = st.sampled_from(["empty", "one"] + ["coded"] * 6 + ["long"])
close_codes = st.sampled_from(CLOSE_CODES) | st.integers(0, 0xFFFF)
close_reasons = st.text(st.characters(codec="utf-8"), max_size=20).map(str.encode) | bad_utf8
message_opcodes = st.sampled_from([OP_TEXT] * 16 + [OP_BINARY, 0x3])
intruders = st.sampled_from([OP_TEXT, OP_BINARY])
item_kinds = st.sampled_from(["message"] * 10 + ["control"] * 3 + ["close", "continuation"])
huge_opcodes = st.sampled_from([OP_TEXT, OP_CONTINUATION, OP_BINARY, OP_PING, OP_CLOSE, 0x3, 0xB])
huge_lengths = st.sampled_from([0xFFFF, 0x10000, 2**32, 2**63 - 1, 2**63, 2**64 - 1])


def bodies(draw: st.DrawFn, limit: int) -> bytes:
    how = draw(body_kinds)
    if how == "bytes":
        return draw(small_binary)
    good = draw(texts)
    if how == "text":
        return good
    if how == "bad":
        at = draw(st.integers(0, len(good)))
        return good[:at] + draw(bad_utf8) + good[at:]
    size = limit + draw(st.integers(-40, 40))
    unit = good or b"x"
    # whole copies of a text, then ASCII up to the size: valid unless cut short
    return (unit * (size // len(unit)) + b"y" * size)[:size]


def tweak(draw: st.DrawFn, spec: Spec, fault_rate: st.SearchStrategy[str] = faults) -> Spec:
    """Most frames are sent right; a few break one rule; some use a longer length form."""
    mask = draw(masks)
    form = draw(forms)
    fault = draw(fault_rate)
    rsv = opcode = 0
    if fault == "rsv":
        rsv = draw(rsv_bits)
    elif fault == "opcode":
        opcode = draw(unknown_opcodes)
        form = draw(any_form)
    if form == 126 and spec.length > 0xFFFF:
        form = 127
    fin = not spec.fin if fault == "fin" and spec.opcode >= OP_CLOSE else spec.fin
    return Spec(
        opcode or spec.opcode,
        spec.payload,
        fin,
        rsv,
        fault != "unmasked",
        mask,
        form,
        spec.declared,
    )


def controls(draw: st.DrawFn) -> Spec:
    oversize = draw(one_in[20]) == 0
    return Spec(draw(ping_or_pong), draw(oversize_payloads if oversize else control_payloads))


def closes(draw: st.DrawFn) -> Spec:
    how = draw(close_kinds)
    if how == "empty":
        payload = b""
    elif how == "one":
        payload = draw(st.binary(min_size=1, max_size=1))
    elif how == "long":
        payload = draw(oversize_payloads)
    else:
        payload = draw(close_codes).to_bytes(2, "big") + draw(close_reasons)[:123]
    return Spec(OP_CLOSE, payload)


def messages(draw: st.DrawFn, limit: int) -> list[Spec]:
    """A message in fragments cut anywhere, control frames between them; sometimes
    binary, an unknown data opcode, interrupted by a new message, or never finished."""
    body = bodies(draw, limit)
    opcode = draw(message_opcodes)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    finished = draw(one_in[10]) > 0
    out: list[Spec] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        out.append(Spec(OP_CONTINUATION if i else opcode, part, fin=last and finished))
        if not last:
            while draw(one_in[5]) < 2:
                out.append(controls(draw))
            if draw(one_in[30]) == 0:
                out.append(closes(draw))
            if draw(one_in[30]) == 0:
                out.append(Spec(draw(intruders), draw(small_binary)))
    return out


def huge(draw: st.DrawFn, limit: int) -> Spec:
    """A frame whose header claims more than the stream will ever hold."""
    declared = draw(huge_lengths | st.integers(limit + 1, 2**64 - 1))
    return Spec(draw(huge_opcodes), draw(st.binary(max_size=8)), declared=declared)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    limit = draw(st.sampled_from(LIMITS))
    plain: list[Spec] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(item_kinds)
        if kind == "message":
            plain += messages(draw, limit)
        elif kind == "control":
            plain.append(controls(draw))
        elif kind == "close":
            plain.append(closes(draw))
        else:
            plain.append(Spec(OP_CONTINUATION, draw(small_binary)))
    if draw(one_in[6]) == 0:
        plain.append(huge(draw, limit))
    elif draw(one_in[5]) == 0:
        plain.append(closes(draw))
    cut = draw(one_in[6]) == 0
    specs = [tweak(draw, spec) for spec in plain[:-1]]
    specs.append(tweak(draw, plain[-1], last_faults if cut else faults))
    data = b"".join(spec.wire() for spec in specs)
    if cut:
        # the stream stops inside its last frame, often inside its header
        begin = len(data) - len(specs[-1].wire())
        end = begin + len(specs[-1].head()) if draw(one_in[5]) < 3 else len(data)
        data = data[: draw(st.integers(begin, min(end, len(data))))]
    if len(data) <= 400 and draw(one_in[5]) == 0:
        cuts = list(range(len(data)))
    else:
        cuts = draw(st.lists(st.integers(0, len(data)), max_size=6))
    return Case(limit, specs, data, cuts)


# --- the tests -----------------------------------------------------------------------


# a few ms a stream; more streams may take longer than the suite's usual timeout
@pytest.mark.timeout(max(300, EXAMPLES // 10))
def test_core_and_websockets_agree_on_every_stream() -> None:
    used: Counter[str] = Counter()
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases())
    def agree(case: Case) -> None:
        outcome = compare(case, used)
        seen["examples"] += 1
        seen["frames"] += len(case.specs)
        seen["bytes"] += len(case.data)
        verdict = outcome.verdict
        if verdict is None:
            seen["open"] += 1
        else:
            seen["closed" if verdict[0] == "closed" else f"refused {verdict[1]}"] += 1
        for kind, _ in outcome.delivered:
            seen[kind] += 1

    agree()
    print(f"\ndifferential: {dict(seen)}\ndifferences applied: {dict(used)}")
    assert seen["examples"] >= EXAMPLES
    assert set(used) <= set(DIFFERENCES)
    if EXAMPLES >= DEFAULT_EXAMPLES:
        # the streams reach every outcome (each difference: test_each_difference_happens)
        for key in ("open", "closed", "text", "ping", "pong"):
            assert seen[key], key
        for code in (1002, 1003, 1007, 1009):
            assert seen[f"refused {code}"], code


def frames(*specs: Spec, limit: int = 125, cut: int | None = None) -> Case:
    data = b"".join(spec.wire() for spec in specs)
    return Case(limit, list(specs), data if cut is None else data[:cut], [])


CLOSE_1000 = (1000).to_bytes(2, "big")

# A stream where each difference shows, and what core makes of it.
WITNESSES: dict[str, tuple[Case, Outcome]] = {
    "binary": (frames(Spec(OP_BINARY, b"bin")), Outcome(verdict=("failed", 1003))),
    "binary-first": (
        frames(Spec(OP_TEXT, b"a", fin=False), Spec(OP_BINARY, b"b")),
        Outcome(verdict=("failed", 1003)),
    ),
    "framing-before-size": (
        frames(Spec(OP_PING, b"p" * 126)),
        Outcome(verdict=("failed", 1002)),
    ),
    "close-code-before-reason": (
        frames(Spec(OP_CLOSE, (1005).to_bytes(2, "big") + b"\xff")),
        Outcome(verdict=("failed", 1002)),
    ),
    "close-inside-message": (
        frames(Spec(OP_TEXT, b"a", fin=False), Spec(OP_CLOSE, CLOSE_1000 + b"bye")),
        Outcome(verdict=("closed", 1000, "bye")),
    ),
    "control-outside-budget": (
        frames(
            Spec(OP_TEXT, b"a" * 100, fin=False),
            Spec(OP_PING, b"p" * 50),
            Spec(OP_CONTINUATION, b"b" * 25),
        ),
        Outcome([("ping", b"p" * 50), ("text", "a" * 100 + "b" * 25)], [b"\x8a2" + b"p" * 50]),
    ),
    "header-verdict": (
        frames(Spec(OP_TEXT, b"abc", rsv=0x40), cut=6),
        Outcome(verdict=("failed", 1002)),
    ),
    "length-before-opcode": (
        frames(Spec(0x3, b"x" * 200), cut=3),
        Outcome(verdict=("failed", 1002)),
    ),
}


def test_every_difference_has_a_witness() -> None:
    assert set(WITNESSES) == set(DIFFERENCES)


@pytest.mark.parametrize("name", sorted(WITNESSES))
def test_each_difference_happens(name: str) -> None:
    case, expected = WITNESSES[name]
    used: Counter[str] = Counter()
    assert compare(case, used) == expected
    assert used[name] >= 1
    assert set(used) == {name}


def test_both_take_every_length_form() -> None:
    # RFC 6455 5.2 asks senders for the shortest form; both read the longer ones
    specs = [Spec(OP_TEXT, b"x" * 5, form=form) for form in (None, 126, 127)]
    assert compare(frames(*specs), Counter()).delivered == [("text", "xxxxx")] * 3
