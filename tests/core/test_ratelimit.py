"""core.ratelimit: the per-session token bucket (5 a second, bursts of 10), clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatroom.core.ratelimit import TokenBucket

RATE = 5.0
BURST = 10.0


def bucket(now: float = 100.0) -> TokenBucket:
    return TokenBucket.full(RATE, BURST, now)


def test_a_full_bucket_allows_a_burst_of_ten_then_refuses() -> None:
    b = bucket()
    assert [b.take(100.0) for _ in range(10)] == [0.0] * 10
    wait = b.take(100.0)
    assert wait == pytest.approx(1 / RATE)


def test_refusals_take_nothing() -> None:
    b = bucket()
    for _ in range(10):
        b.take(100.0)
    for _ in range(50):
        assert b.take(100.0) > 0
    # one token's time later exactly one more is allowed, however often it was refused
    assert b.take(100.2 + 1e-9) == 0.0
    assert b.take(100.2 + 1e-9) > 0


def test_tokens_come_back_at_five_a_second() -> None:
    b = bucket()
    for _ in range(10):
        b.take(100.0)
    allowed = sum(1 for _ in range(20) if b.take(101.0 + 1e-9) == 0.0)
    assert allowed == 5


def test_idle_time_saves_up_at_most_the_burst() -> None:
    b = bucket()
    for _ in range(10):
        b.take(100.0)
    allowed = sum(1 for _ in range(30) if b.take(1000.0) == 0.0)
    assert allowed == 10


def test_wait_tells_when_the_next_token_is_free() -> None:
    b = bucket()
    for _ in range(10):
        b.take(100.0)
    assert b.take(100.05) == pytest.approx(0.15)
    assert b.take(100.19) > 0
    assert b.take(100.2 + 1e-9) == 0.0


def test_a_clock_step_back_grants_nothing_then() -> None:
    b = bucket()
    for _ in range(10):
        b.take(100.0)
    assert b.take(90.0) > 0


def test_steady_speakers_under_the_rate_are_never_refused() -> None:
    b = bucket()
    now = 100.0
    for _ in range(500):
        now += 0.2  # exactly five a second
        assert b.take(now) == 0.0


@settings(deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=120))
def test_never_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    start = 100.0
    b = bucket(start)
    now = start
    allowed: list[float] = []
    for gap in gaps:
        now += gap
        wait = b.take(now)
        assert 0.0 <= wait <= 1 / RATE + 1e-9
        if wait == 0.0:
            allowed.append(now)
    # in every window of time, at most the burst plus what the rate refilled
    for i, t0 in enumerate(allowed):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= BURST + RATE * (allowed[j] - t0) + 1e-6


@given(st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=60))
def test_waiting_the_time_it_says_is_enough(gaps: list[float]) -> None:
    b = bucket()
    now = 100.0
    for gap in gaps:
        now += gap
        b.take(now)
    while (wait := b.take(now)) == 0.0:
        pass
    assert 0.0 < wait <= 1 / RATE + 1e-9
    assert b.take(now + wait / 2) > 0  # not yet
    assert b.take(now + wait + 1e-9) == 0.0
