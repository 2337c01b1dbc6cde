"""The soak in its short mode, on SQLite and on Redis, and the ledger's check itself.

The short runs: a few dozen clients on the four techniques, two faults each (SIGKILL of
the server; on Redis, of a node and of Redis), a flood with slow readers cut off. The
ledger must find nothing lost, nothing doubled, nothing out of order. The check is
proven first on made-up ledgers: each kind of violation is found where it is.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.soak.ledger import ClientLedger, History, Page, Said, Stint, check, digest
from tests.soak.run import Config, Report, soak

# --- the check, on made-up ledgers ------------------------------------------------


def _event(offset: int, user: str = "bob", text: str | None = None) -> dict[str, Any]:
    kind = "message" if text is not None else "join"
    event: dict[str, Any] = {"id": f"ep-{offset}", "type": kind, "user": user}
    if text is not None:
        event["text"] = text
    return event


def _at(k: int) -> dict[str, Any]:
    """The event at offset k of the made-up history: bob's join, then "bob.k hi"."""
    return _event(1) if k == 1 else _event(k, text=f"bob.{k} hi")


def _history(n: int = 10) -> dict[str, History]:
    return {"r": History.of("r", [_at(k) for k in range(1, n + 1)])}


def _stint(offsets: list[int | None], start: int = 1, target: int | None = None) -> Stint:
    """A stint from `start` receiving these offsets (None: a reset naming offset 1)."""
    stint = Stint("r", f"ep-{start}", target=None if target is None else f"ep-{target}")
    for k in offsets:
        stint.receive({"type": "reset", "id": "ep-1"} if k is None else _at(k))
    return stint


def _reader(*stints: Stint) -> ClientLedger:
    ledger = ClientLedger("ann", "websocket")
    ledger.stints.extend(stints)
    return ledger


def test_a_faithful_stint_has_no_findings() -> None:
    found = check([_reader(_stint([2, 3, 4, 5], target=5))], _history())
    assert found.violations == 0
    assert found.deliveries == 4


def test_a_hole_in_what_was_received_is_a_loss() -> None:
    found = check([_reader(_stint([2, 3, 6, 7]))], _history())
    assert (found.lost, found.duplicates, found.disorder) == (2, 0, 0)


def test_stopping_short_of_the_head_is_a_loss() -> None:
    found = check([_reader(_stint([2, 3], target=6))], _history())
    assert found.lost == 3


def test_an_event_received_twice_is_a_duplicate() -> None:
    found = check([_reader(_stint([2, 3, 3, 4]))], _history())
    assert (found.lost, found.duplicates, found.disorder) == (0, 1, 0)


def test_an_event_after_a_later_one_is_disorder() -> None:
    found = check([_reader(_stint([2, 4, 3, 5]))], _history())
    assert found.disorder == 1
    assert found.duplicates == 0


def test_content_that_differs_from_history_is_mismatched() -> None:
    stint = Stint("r", "ep-1")
    stint.receive(_event(2, text="bob.2 something else"))
    found = check([_reader(stint)], _history())
    assert found.mismatched == 1


def test_an_event_history_does_not_hold_is_a_phantom() -> None:
    found = check([_reader(_stint([2, 3, 42]))], _history())
    assert found.phantoms == 1


def test_a_reset_is_a_violation_unless_streams_were_lost() -> None:
    stints = [_stint([2, 3, None, 1, 2, 3, 4])]
    assert check([_reader(*stints)], _history()).unexpected_resets == 1
    found = check([_reader(*stints)], _history(), streams_lost=[1.0])
    assert found.violations == 0
    assert found.resets == 1
    # after a reset, events start at the oldest id it named
    assert check([_reader(_stint([2, None, 3, 4]))], _history(), streams_lost=[1.0]).lost == 2


def test_a_new_stream_without_a_reset_first_is_unannounced() -> None:
    old = Stint("r", "old-7")
    old.receive({"id": "old-8", "type": "join", "user": "x"})
    old.receive({"id": "ep-2", "type": "message", "user": "bob", "text": "bob.2 hi"})
    found = check([_reader(old)], _history(), streams_lost=[1.0])
    assert found.unannounced == 1
    assert found.unverifiable == 1
    told = Stint("r", "old-7")
    for frame in (
        {"id": "old-8", "type": "join", "user": "x"},
        {"type": "reset", "id": "ep-1"},
        *(_at(k) for k in (1, 2, 3)),
    ):
        told.receive(frame)
    assert check([_reader(told)], _history(), streams_lost=[1.0]).violations == 0
    # without a stream lost on purpose, an event history does not hold is a phantom
    assert check([_reader(told)], _history()).phantoms == 1


def test_an_accepted_message_missing_or_stored_twice_is_found() -> None:
    ledger = ClientLedger("bob", "longpolling")
    ledger.said["bob.3"] = Said("bob.3", "r", "bob.3 hi", "ep-3", accepted=True)
    ledger.said["bob.99"] = Said("bob.99", "r", "bob.99 hi", accepted=True)
    ledger.said["bob.98"] = Said("bob.98", "r", "bob.98 hi", attempts=3)
    histories = _history()
    found = check([ledger], histories)
    assert (found.accepted, found.lost, found.unanswered) == (2, 1, 1)
    doubled = History.of("r", [_event(1), _event(2, text="bob.2 hi"), _event(3, text="bob.2 hi")])
    assert check([], {"r": doubled}).duplicates == 1


def test_what_a_lost_stream_took_along_is_no_loss() -> None:
    ledger = ClientLedger("bob", "longpolling")
    ledger.said["bob.99"] = Said("bob.99", "r", "bob.99 hi", "old-5", True, answered_at=10.0)
    ledger.said["bob.98"] = Said("bob.98", "r", "bob.98 hi", "ep-9", True, answered_at=30.0)
    found = check([ledger], _history(), streams_lost=[20.0])
    assert (found.lost_with_stream, found.lost) == (1, 1)


def test_a_hole_in_history_is_a_loss() -> None:
    holed = History.of("r", [_event(1), _event(2, text="a"), _event(4, text="b")])
    assert check([], {"r": holed}).lost == 1


def test_an_answer_naming_another_event_is_mismatched() -> None:
    ledger = ClientLedger("bob", "websocket")
    ledger.said["bob.3"] = Said("bob.3", "r", "bob.3 hi", "ep-4", accepted=True)
    assert check([ledger], _history()).mismatched == 1


def test_a_refresh_page_with_a_hole_or_a_wrong_last_id() -> None:
    history = _history()["r"]

    def page(offsets: list[int], last: int) -> Page:
        return Page(
            "r",
            f"ep-{last}",
            [f"ep-{k}" for k in offsets],
            [history.digests[k - 1] for k in offsets],
        )

    ledger = ClientLedger("cy", "refresh")
    ledger.pages = [page([3, 4, 5], 5)]
    assert check([ledger], {"r": history}).violations == 0
    ledger.pages = [page([3, 5, 6], 6)]
    assert check([ledger], {"r": history}).lost == 1
    ledger.pages = [page([3, 4], 5)]
    assert check([ledger], {"r": history}).mismatched == 1
    assert digest("join", "bob", None) == history.digests[0]


# --- the short soak -----------------------------------------------------------------


def _assert_clean(report: Report) -> None:
    text = report.text()
    f = report.findings
    assert (f.lost, f.duplicates, f.disorder) == (0, 0, 0), text
    assert (f.mismatched, f.phantoms, f.unexpected_resets, f.unanswered) == (0, 0, 0, 0), text
    assert f.accepted > 0, text
    assert f.deliveries > 0, text
    assert report.faults, text
    assert report.faults_survived == len(report.faults), text
    assert not report.client_errors, text
    assert report.server_errors == 0, text
    # the floods stalled slow readers, and the server cut them off rather than wait
    cutoffs = sum(n for kind, n in report.stats.items() if "cutoff" in kind)
    assert cutoffs >= 1, text


def short(backend: str) -> Config:
    """The short mode, a little shorter: both backends run in about a minute."""
    return Config(
        backend=backend, clients=64, duration=20.0, faults=2, floods=1, verbose=False
    )


@pytest.mark.timeout(150)
async def test_short_soak_on_sqlite() -> None:
    report = await soak(short("sqlite"))
    _assert_clean(report)


@pytest.mark.timeout(150)
async def test_short_soak_on_redis() -> None:
    # the two faults: SIGKILL of a node, then of Redis (which keeps an fsynced AOF)
    report = await soak(short("redis"))
    _assert_clean(report)
    assert any("redis-server" in f.what for f in report.faults), report.text()
