"""Stopping background tasks for sure, even when a client library swallows a cancel."""

from __future__ import annotations

import asyncio
import logging

__all__ = ["cancel_requested", "stop_tasks"]

log = logging.getLogger(__name__)


async def stop_tasks(tasks: list[asyncio.Task[None]], grace: float = 2.0) -> None:
    """Cancel background tasks and wait for them, cancelling again any that ignored it.

    A client library that swallows a cancellation mid-command (seen with redis-py)
    would otherwise make shutdown wait forever.
    """
    for task in tasks:
        task.cancel()
    pending = {t for t in tasks if not t.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            log.warning("task %s ignored a cancellation: cancelling it again", task.get_name())
            task.cancel()
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %r", task.get_name(), task.exception())


def cancel_requested() -> bool:
    """True inside a task that was asked to stop, even if the CancelledError got lost."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
