"""A clock the test moves by hand, for presence expiries (open_backend's presence_clock)."""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """Seconds that pass only when the test says so. Steps that are sums of halves,
    quarters and whole seconds stay exact, in floats and in Redis's milliseconds."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
