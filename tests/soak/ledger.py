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
  never received (a hole, or the tail it did not reach before the end);
- duplicates: a message stored twice (one client_id, two events); an event a client
  received twice without a reset between;
- disorder: an event received after one with a greater id;
- mismatched: an event received whose content differs from history's, or an answer
  naming an id that history holds for another message;
- phantoms: an event received that history does not hold;
- unexpected resets: a reset told to a client when the run expects none.

Every text a soak client says starts with its client_id, so history (which does not
carry client_ids) can be matched to what was said.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    # times sent (a retry re-sends the same client_id)
    attempts: int = 0
    # the server refused it for good (reason), e.g. 410 after a Leave
    refused: str | None = None


@dataclass
class Stint:
    """One continuous time of a streaming client in a room, and what it received.

    `start` is the id the room page named as its last (None: the room was empty).
    Events are kept compactly: their ids, and a digest of their content. A reset is an
    entry with id None; its digest slot holds nothing.
    """

    room: str
    start: str | None
    ids: list[str | None] = field(default_factory=list)
    digests: array[int] = field(default_factory=lambda: array("q"))
    # the id the client was asked to reach before it stopped (the room's head once all
    # says were answered); None if the stint ended before (a Leave)
    target: str | None = None

    def receive(self, event: Mapping[str, Any]) -> None:
        """Record one frame: an event, or a reset marker."""
        if event.get("type") == "reset":
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

    def __post_init__(self) -> None:
        self.index = {event_id: i for i, event_id in enumerate(self.ids)}
        self.said = {}
        for i, (user, text) in enumerate(zip(self.users, self.texts, strict=True)):
            cid = marker(text)
            if cid is not None:
                self.said.setdefault((user, cid), []).append(i)

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

    @property
    def head(self) -> str | None:
        return self.ids[-1] if self.ids else None


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
            + self.unexpected_resets + self.unanswered
        )


def check(
    ledgers: Sequence[ClientLedger],
    histories: Mapping[str, History],
    *,
    resets_expected: bool = False,
) -> Findings:
    """Every accepted message in history once; every stint and page true to history."""
    found = Findings()
    _check_history(histories, found)
    for ledger in ledgers:
        _check_said(ledger, histories, found)
        for stint in ledger.stints:
            _check_stint(ledger.name, stint, histories, found, resets_expected)
        for page in ledger.pages:
            _check_page(ledger.name, page, histories, found)
    return found


def _check_history(histories: Mapping[str, History], found: Findings) -> None:
    """A message stored twice is a duplicate, whoever said it and whatever was answered."""
    for history in histories.values():
        for (user, cid), places in history.said.items():
            if len(places) > 1:
                found.duplicates += len(places) - 1
                found.note(
                    "duplicates", f"{history.room}: {user}'s {cid} stored {len(places)} times"
                )


def _check_said(
    ledger: ClientLedger, histories: Mapping[str, History], found: Findings
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
        history = histories.get(said.room)
        places = [] if history is None else history.said.get((ledger.name, said.client_id), [])
        if history is None or not places:
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


def _check_stint(
    name: str,
    stint: Stint,
    histories: Mapping[str, History],
    found: Findings,
    resets_expected: bool,
) -> None:
    history = histories.get(stint.room)
    if history is None:
        history = History.of(stint.room, [])
    where = f"{name} in {stint.room}"
    # index in history of the next event due; None right after a reset (anything
    # retained may come next)
    due: int | None
    if stint.start is None:
        due = 0
    elif stint.start in history.index:
        due = history.index[stint.start] + 1
    else:
        found.phantoms += 1
        found.note("phantoms", f"{where}: its page named {stint.start}, not in history")
        due = None
    seen: set[int] = set()
    top = -1  # greatest history index received since the last reset
    for event_id, fingerprint in zip(stint.ids, stint.digests, strict=True):
        if event_id is None:
            found.resets += 1
            if not resets_expected:
                found.unexpected_resets += 1
                found.note("unexpected_resets", f"{where}: told reset after {top}")
            seen.clear()
            due = None
            top = -1
            continue
        i = history.index.get(event_id)
        if i is None:
            found.phantoms += 1
            found.note("phantoms", f"{where}: received {event_id}, not in history")
            continue
        found.deliveries += 1
        if history.digests[i] != fingerprint:
            found.mismatched += 1
            found.note("mismatched", f"{where}: {event_id} differs from history")
        if i in seen:
            found.duplicates += 1
            found.note("duplicates", f"{where}: {event_id} received twice")
            continue
        seen.add(i)
        if i < top:
            found.disorder += 1
            found.note("disorder", f"{where}: {event_id} after {history.ids[top]}")
            continue
        if due is None:
            due = i
        if i > due:
            # a hole: the events between were never received (unless they come later,
            # out of order, which is counted as disorder and not lost)
            missing = [j for j in range(due, i) if j not in seen]
            found.lost += len(missing)
            found.note("lost", f"{where}: {len(missing)} events before {event_id} missing")
        due = i + 1
        top = i
    if stint.target is not None and stint.target in history.index:
        end = history.index[stint.target]
        if due is not None and end >= due:
            found.lost += end - due + 1
            found.note(
                "lost", f"{where}: stopped {end - due + 1} events short of {stint.target}"
            )


def _check_page(name: str, page: Page, histories: Mapping[str, History], found: Findings) -> None:
    history = histories.get(page.room)
    if history is None:
        history = History.of(page.room, [])
    where = f"{name}'s page of {page.room}"
    found.pages += 1
    previous: int | None = None
    for event_id, fingerprint in zip(page.ids, page.digests, strict=True):
        i = history.index.get(event_id)
        if i is None:
            found.phantoms += 1
            found.note("phantoms", f"{where}: shows {event_id}, not in history")
            continue
        found.deliveries += 1
        if history.digests[i] != fingerprint:
            found.mismatched += 1
            found.note("mismatched", f"{where}: {event_id} differs from history")
        if previous is not None:
            if i == previous:
                found.duplicates += 1
                found.note("duplicates", f"{where}: {event_id} shown twice")
            elif i < previous:
                found.disorder += 1
                found.note("disorder", f"{where}: {event_id} after {history.ids[previous]}")
            elif i > previous + 1:
                found.lost += i - previous - 1
                found.note("lost", f"{where}: a hole before {event_id}")
        previous = i
    if page.ids and page.ids[-1] != page.last_id:
        found.mismatched += 1
        found.note("mismatched", f"{where}: ends at {page.ids[-1]}, names {page.last_id} last")
