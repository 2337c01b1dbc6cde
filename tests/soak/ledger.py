"""What every soak client kept, and the check of it against the server's history.

Each client keeps a ledger: every message it said (with its client_id, and the id the
server answered when it answered one), and every event it received, per stint in a
room, in the order it received them. A stint is one continuous time in a room: it
starts at the cursor the room page gave (the page's last id) and ends with the last
event received before the client left or stopped. An Active Refresh client keeps the
pages it loaded instead: each is a window of the room's last events.

`check()` reads nothing itself: it takes the history of each room (read from the
server after the run) and counts, per violation kind:

- lost: an accepted message missing from history; an event of a client's stint it
  never received (a hole, or the tail it did not reach before the end); a hole in
  history itself;
- duplicates: a message stored twice (one client_id, two events); an event a client
  received twice without a reset between;
- disorder: an event received after one with a greater id;
- mismatched: an event received whose content differs from history's, or an answer
  naming an id that history holds for another message;
- phantoms: an event received that history does not hold;
- unexpected resets: a reset told to a client when the run expects none;
- unannounced: events of a new stream (another epoch) received with no reset first.

Event ids are "<epoch>-<offset>", offsets growing by one per event of a room's stream
(the soak keeps every event: its retention is above what a run stores), so the checks
work on positions. When a run loses streams on purpose (a Redis without persistence,
restarted), history holds only the last stream: events and messages of the streams
lost before cannot be matched, and are counted apart (`lost_with_stream`), never as
lost, provided each client was told reset before anything of the new stream.

Every text a soak client says starts with its client_id, so history (which does not
carry client_ids) can be matched to what was said.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatroom.core.events import Position, parse_cursor

__all__ = [
    "ClientLedger",
    "Findings",
    "History",
    "Page",
    "Said",
    "Stint",
    "check",
    "digest",
    "marker",
]


def digest(kind: str, user: str, text: str | None) -> int:
    """A compact fingerprint of an event's content (stable within one process)."""
    return hash((kind, user, text or ""))


def marker(text: str | None) -> str | None:
    """The client_id a soak text starts with, or None."""
    if not text:
        return None
    head, _, _ = text.partition(" ")
    return head or None


def _position(event_id: str) -> Position:
    position = parse_cursor(event_id)
    if position is None:
        raise ValueError(f"not an event id: {event_id!r}")
    return position


@dataclass
class Said:
    """One message a client said, and how it was answered."""

    client_id: str
    room: str
    text: str
    # the id the answer carried (WebSocket ack, long-poll POST); None when the answer
    # carries none (the Active Refresh form's 303) or never came
    event_id: str | None = None
    # the server answered success: the message must be in history, once
    accepted: bool = False
    # when the success came (monotonic seconds): a stream lost after it took it along
    answered_at: float | None = None
    # times sent (a retry re-sends the same client_id)
    attempts: int = 0
    # the server refused it for good (reason), e.g. 410 after a Leave
    refused: str | None = None


@dataclass
class Stint:
    """One continuous time of a streaming client in a room, and what it received.

    `start` is the id the room page named as its last (None: the room was empty).
    Events are kept compactly: their ids, and a digest of their content. A reset is an
    entry with id None; `resets` keeps the oldest id it named, by entry.
    """

    room: str
    start: str | None
    ids: list[str | None] = field(default_factory=list)
    digests: array[int] = field(default_factory=lambda: array("q"))
    resets: dict[int, str | None] = field(default_factory=dict)
    # the id the client was asked to reach before it stopped (the room's head once all
    # says were answered); None if the stint ended before (a Leave)
    target: str | None = None

    def receive(self, event: Mapping[str, Any]) -> None:
        """Record one frame: an event, or a reset marker."""
        if event.get("type") == "reset":
            oldest = event.get("id")
            self.resets[len(self.ids)] = None if oldest is None else str(oldest)
            self.ids.append(None)
            self.digests.append(0)
            return
        self.ids.append(str(event["id"]))
        self.digests.append(digest(event["type"], event["user"], event.get("text")))

    @property
    def last(self) -> str | None:
        """The last event id received (the cursor to resume from), else the start."""
        for event_id in reversed(self.ids):
            if event_id is not None:
                return event_id
        return self.start


@dataclass
class Page:
    """One Active Refresh page: its last id and its thread, as (id, digest) in order."""

    room: str
    last_id: str
    ids: list[str]
    digests: list[int]


@dataclass
class ClientLedger:
    name: str
    technique: str
    said: dict[str, Said] = field(default_factory=dict)
    stints: list[Stint] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)


@dataclass
class History:
    """One room's history as read from the server, oldest first."""

    room: str
    ids: list[str]
    digests: list[int]
    users: list[str]
    texts: list[str | None]
    # id -> place in `ids`
    index: dict[str, int] = field(init=False)
    # (user, client_id its text starts with) -> places of those messages
    said: dict[tuple[str, str], list[int]] = field(init=False)
    # the epoch of its stream (of its last event), and the offset of its first event
    epoch: str | None = field(init=False)
    first: int = field(init=False)

    def __post_init__(self) -> None:
        self.index = {event_id: i for i, event_id in enumerate(self.ids)}
        self.said = {}
        for i, (user, text) in enumerate(zip(self.users, self.texts, strict=True)):
            cid = marker(text)
            if cid is not None:
                self.said.setdefault((user, cid), []).append(i)
        last = _position(self.ids[-1]) if self.ids else None
        self.epoch = last.epoch if last else None
        self.first = _position(self.ids[0]).offset if self.ids else 1

    @classmethod
    def of(cls, room: str, events: Iterable[Mapping[str, Any]]) -> History:
        ids: list[str] = []
        digests: list[int] = []
        users: list[str] = []
        texts: list[str | None] = []
        for e in events:
            ids.append(str(e["id"]))
            digests.append(digest(e["type"], e["user"], e.get("text")))
            users.append(e["user"])
            texts.append(e.get("text"))
        return cls(room, ids, digests, users, texts)

    def at(self, position: Position) -> int | None:
        """The place in history of the event at `position`, if history holds it."""
        return self.index.get(str(position))


@dataclass
class Findings:
    accepted: int = 0
    said: int = 0
    refused: int = 0
    # says never answered at all, even after every retry
    unanswered: int = 0
    deliveries: int = 0
    pages: int = 0
    lost: int = 0
    duplicates: int = 0
    disorder: int = 0
    mismatched: int = 0
    phantoms: int = 0
    resets: int = 0
    unexpected_resets: int = 0
    unannounced: int = 0
    # accepted messages, and events received, of streams lost on purpose (not violations)
    lost_with_stream: int = 0
    unverifiable: int = 0
    # what went wrong, a few examples per kind, for the report
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, text: str) -> None:
        shown = self.examples.setdefault(kind, [])
        if len(shown) < 5:
            shown.append(text)

    @property
    def violations(self) -> int:
        return (
            self.lost + self.duplicates + self.disorder + self.mismatched + self.phantoms
            + self.unexpected_resets + self.unannounced + self.unanswered
        )


def check(
    ledgers: Sequence[ClientLedger],
    histories: Mapping[str, History],
    *,
    streams_lost: Sequence[float] = (),
) -> Findings:
    """Every accepted message in history once; every stint and page true to history.

    `streams_lost`: when (monotonic seconds) the run lost every stream on purpose (the
    time its server answered again: an answer that came before may be of a message
    stored before the loss). Without any, a reset is a violation; with some, resets are
    expected, and what was accepted or received before the last may miss from history.
    """
    found = Findings()
    for history in histories.values():
        _check_history(history, found)
    for ledger in ledgers:
        _check_said(ledger, histories, found, max(streams_lost, default=None))
        for stint in ledger.stints:
            _StintCheck(ledger.name, stint, _history(histories, stint.room), found,
                        resets_expected=bool(streams_lost)).run()
        for page in ledger.pages:
            _check_page(ledger.name, page, _history(histories, page.room), found)
    return found


def _history(histories: Mapping[str, History], room: str) -> History:
    return histories.get(room) or History.of(room, [])


def _check_history(history: History, found: Findings) -> None:
    """History itself: one stream, offsets one by one, no message stored twice."""
    for i, event_id in enumerate(history.ids):
        position = _position(event_id)
        if position.epoch != history.epoch:
            found.phantoms += 1
            found.note("phantoms", f"{history.room}: history mixes streams at {event_id}")
        elif position.offset != history.first + i:
            found.lost += 1
            found.note("lost", f"{history.room}: history has a hole before {event_id}")
    for (user, cid), places in history.said.items():
        if len(places) > 1:
            found.duplicates += len(places) - 1
            found.note("duplicates", f"{history.room}: {user}'s {cid} stored {len(places)} times")


def _check_said(
    ledger: ClientLedger,
    histories: Mapping[str, History],
    found: Findings,
    last_loss: float | None,
) -> None:
    for said in ledger.said.values():
        found.said += 1
        if said.refused is not None:
            found.refused += 1
            continue
        if not said.accepted:
            found.unanswered += 1
            found.note("unanswered", f"{ledger.name}'s {said.client_id} never answered")
            continue
        found.accepted += 1
        history = _history(histories, said.room)
        places = history.said.get((ledger.name, said.client_id), [])
        if not places:
            if (
                last_loss is not None
                and said.answered_at is not None
                and said.answered_at < last_loss
            ):
                found.lost_with_stream += 1
                continue
            found.lost += 1
            found.note("lost", f"{said.room}: {ledger.name}'s {said.client_id} not in history")
            continue
        # (more than one place was counted by _check_history)
        first = places[0]
        if history.texts[first] != said.text:
            found.mismatched += 1
            found.note("mismatched", f"{ledger.name}'s {said.client_id}: stored text differs")
        if said.event_id is not None and said.event_id != history.ids[first]:
            found.mismatched += 1
            found.note(
                "mismatched",
                f"{ledger.name}'s {said.client_id} answered {said.event_id}, "
                f"stored as {history.ids[first]}",
            )


class _StintCheck:
    """Walks one stint: each event must follow the one before it by exactly one offset,
    in the same stream, unless a reset came between (then anything retained may come
    next, starting at the oldest id the reset named)."""

    def __init__(
        self, name: str, stint: Stint, history: History, found: Findings, resets_expected: bool
    ) -> None:
        self.where = f"{name} in {stint.room}"
        self.stint = stint
        self.history = history
        self.found = found
        self.resets_expected = resets_expected
        # where the next event must be: right after `previous`; None right after a reset
        self.previous: Position | None = _position(stint.start) if stint.start else None
        self.after_reset = False
        # the oldest id the last reset named (None: it named none)
        self.reset_oldest: Position | None = None
        self.seen: set[Position] = set()

    def run(self) -> None:
        stint, found = self.stint, self.found
        if self.previous is not None and self.previous.epoch == self.history.epoch and (
            self.history.at(self.previous) is None
        ):
            found.phantoms += 1
            found.note("phantoms", f"{self.where}: its page named {stint.start}, not in history")
        for i, (event_id, fingerprint) in enumerate(zip(stint.ids, stint.digests, strict=True)):
            if event_id is None:
                self.reset(stint.resets.get(i))
            else:
                self.event(_position(event_id), fingerprint)
        self.tail()

    def reset(self, oldest: str | None) -> None:
        found = self.found
        found.resets += 1
        if not self.resets_expected:
            found.unexpected_resets += 1
            found.note("unexpected_resets", f"{self.where}: told reset after {self.previous}")
        self.after_reset = True
        self.reset_oldest = _position(oldest) if oldest else None
        self.seen.clear()

    def event(self, position: Position, fingerprint: int) -> None:
        found, history, where = self.found, self.history, self.where
        place = history.at(position) if position.epoch == history.epoch else None
        if place is None:
            if position.epoch == history.epoch or not self.resets_expected:
                found.phantoms += 1
                found.note("phantoms", f"{where}: received {position}, not in history")
                return
            # a stream lost on purpose: what it held cannot be matched any more
            found.unverifiable += 1
        else:
            found.deliveries += 1
            if history.digests[place] != fingerprint:
                found.mismatched += 1
                found.note("mismatched", f"{where}: {position} differs from history")
        if position in self.seen:
            found.duplicates += 1
            found.note("duplicates", f"{where}: {position} received twice")
            return
        self.seen.add(position)
        previous = self.previous
        if self.after_reset:
            # anything retained may come first, from the oldest the reset named
            oldest = self.reset_oldest
            if oldest is None:
                expected = 1
            elif oldest.epoch == position.epoch:
                expected = oldest.offset
            else:
                # the stream changed again between the reset and this event
                expected = position.offset
            self._gap(position, expected)
        elif previous is None:
            # the room was empty when the page was made: its stream starts at 1
            self._gap(position, 1)
        elif position.epoch != previous.epoch:
            found.unannounced += 1
            found.note("unannounced", f"{where}: {position} after {previous}, no reset between")
        elif position.offset <= previous.offset:
            found.disorder += 1
            found.note("disorder", f"{where}: {position} after {previous}")
            return
        else:
            self._gap(position, previous.offset + 1)
        self.previous = position
        self.after_reset = False

    def _gap(self, position: Position, expected: int) -> None:
        if position.offset > expected:
            missing = position.offset - expected
            self.found.lost += missing
            self.found.note("lost", f"{self.where}: {missing} events before {position} missing")
        elif position.offset < expected:
            self.found.disorder += 1
            self.found.note("disorder", f"{self.where}: {position} before {expected}")

    def tail(self) -> None:
        """The stint had to read on to its target (the room's head once all was said)."""
        target = self.stint.target
        if target is None:
            return
        goal = _position(target)
        previous = self.previous
        if previous is None or previous.epoch != goal.epoch:
            short = goal.offset - (self.history.first - 1)
        else:
            short = goal.offset - previous.offset
        if short > 0:
            self.found.lost += short
            self.found.note("lost", f"{self.where}: stopped {short} events short of {target}")


def _check_page(name: str, page: Page, history: History, found: Findings) -> None:
    """A page shows a window of the room's last events: one stream, one by one."""
    where = f"{name}'s page of {page.room}"
    found.pages += 1
    previous: Position | None = None
    for event_id, fingerprint in zip(page.ids, page.digests, strict=True):
        position = _position(event_id)
        place = history.at(position) if position.epoch == history.epoch else None
        if place is None and position.epoch == history.epoch:
            found.phantoms += 1
            found.note("phantoms", f"{where}: shows {event_id}, not in history")
        elif place is None:
            found.unverifiable += 1
        else:
            found.deliveries += 1
            if history.digests[place] != fingerprint:
                found.mismatched += 1
                found.note("mismatched", f"{where}: {event_id} differs from history")
        if previous is not None:
            if position.epoch != previous.epoch:
                found.unannounced += 1
                found.note("unannounced", f"{where}: shows two streams")
            elif position.offset == previous.offset:
                found.duplicates += 1
                found.note("duplicates", f"{where}: {event_id} shown twice")
            elif position.offset < previous.offset:
                found.disorder += 1
                found.note("disorder", f"{where}: {event_id} after {previous}")
            elif position.offset > previous.offset + 1:
                found.lost += position.offset - previous.offset - 1
                found.note("lost", f"{where}: a hole before {event_id}")
        previous = position
    if page.ids and page.ids[-1] != page.last_id:
        found.mismatched += 1
        found.note("mismatched", f"{where}: ends at {page.ids[-1]}, names {page.last_id} last")
