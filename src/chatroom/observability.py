"""Logging a recurring failure once, not once per request or per second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Throttled"]


class Throttled:
    """Logs a problem the first time it happens, then at most once per `interval`
    seconds with how many times it recurred meanwhile; `recovered` logs its end."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        # key -> (last time logged, occurrences since)
        self._failing: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._failing.get(key)
        if last is None:
            self._failing[key] = (now, 0)
            self._log.warning(message, *args)
        elif now - last[0] >= self._interval:
            self._failing[key] = (now, 0)
            self._log.warning(message + " (%d more times since)", *args, last[1])
        else:
            self._failing[key] = (last[0], last[1] + 1)

    def recovered(self, key: str, message: str, *args: object) -> None:
        if self._failing.pop(key, None) is not None:
            self._log.warning(message, *args)
