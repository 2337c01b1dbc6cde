"""Stress to the knee: one server, a fixed subscriber count, rising publish rates.

Each step is an ordinary bench run (a fresh server, the same client processes and
open-loop publisher) at a higher rate than the last. The sweep stops after the first
step that fails, meaning its p99 latency is over the limit or a subscriber lost,
duplicated or reordered a message or failed to connect, or after `max_steps` steps.
The *knee* is the fastest step that still passed: the most deliveries per second the
server keeps up with at that latency.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from chatroom.bench.run import Load, Result, run_chatroom

__all__ = [
    "DEFAULT_FACTOR",
    "DEFAULT_START_DELIVERIES_PER_S",
    "failure_reason",
    "first_failure",
    "knee",
    "knee_table",
    "ladder",
    "passed",
    "sweep",
]

# the first step of the default ladder delivers about this many messages per second...
DEFAULT_START_DELIVERIES_PER_S = 5000.0
# ...and each step publishes this many times faster than the one before
DEFAULT_FACTOR = 1.6


def _round_rate(rate: float) -> float:
    """Up to three significant figures: 166.666... msg/s reads as 167."""
    digits = 2 - math.floor(math.log10(rate))
    # upwards, so that the slowest step still publishes at least one message
    return round(math.ceil(rate * 10.0**digits - 1e-6) / 10.0**digits, max(0, digits))


def ladder(
    subscribers: int,
    duration: float,
    max_steps: int = 8,
    *,
    start_deliveries_per_s: float = DEFAULT_START_DELIVERIES_PER_S,
    factor: float = DEFAULT_FACTOR,
) -> list[float]:
    """The default publish rates (msg/s): geometric, from about `start_deliveries_per_s`
    deliveries per second across `subscribers`, at least one message per `duration`."""
    if subscribers < 1:
        raise ValueError(f"a sweep needs subscribers, not {subscribers}")
    if duration <= 0:
        raise ValueError(f"a sweep needs a positive duration, not {duration}")
    if factor <= 1:
        raise ValueError(f"the ladder must rise: factor {factor} <= 1")
    start = max(start_deliveries_per_s / subscribers, 1.0 / duration)
    rates: list[float] = []
    for step in range(max(0, max_steps)):
        rate = _round_rate(start * factor**step)
        # rounding must not make two steps equal
        if rates and rate <= rates[-1]:
            rate = rates[-1] * factor
        rates.append(rate)
    return rates


def _losses(result: Result) -> list[str]:
    return [
        f"{getattr(result, key)} {label}"
        for key, label in (
            ("lost", "lost"),
            ("duplicated", "duplicated"),
            ("out_of_order", "reordered"),
            ("connect_failures", "connect failures"),
        )
        if getattr(result, key)
    ]


def failure_reason(result: Result, p99_limit_ms: float = 100.0) -> str:
    """Why the step failed ("" if it passed): the p99 over the limit, or what was lost."""
    reasons = _losses(result)
    if result.p99_ms > p99_limit_ms:
        reasons.insert(0, f"p99 {result.p99_ms:g} ms > {p99_limit_ms:g} ms")
    return ", ".join(reasons)


def passed(result: Result, p99_limit_ms: float = 100.0) -> bool:
    """p99 within the limit and every message delivered once, in order, to everyone."""
    return not failure_reason(result, p99_limit_ms)


async def sweep(
    load: Load,
    server: str,
    rates: list[float] | None = None,
    *,
    backend: str,
    workers: int = 1,
    command: str = "",
    p99_limit_ms: float = 100.0,
    max_steps: int = 8,
    on_step: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run `server` at rising publish rates for load.subscribers; one Result per step.

    `server` is "chatroom" (run over `backend` with `workers`) or a peer of
    bench.compare.PEERS. `rates` (msg/s, default: `ladder()`) are run in
    increasing order, at most `max_steps` of them; load.rate and load.burst are
    ignored. The sweep stops after the first step that does not pass (see `passed`).
    `on_step` sees each Result as soon as its step ends (to print or save it: a long
    sweep that dies later keeps what it measured).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, not {max_steps}")
    if rates is None:
        rates = ladder(load.subscribers, load.duration, max_steps)
    if any(not rate > 0 for rate in rates):
        raise ValueError(f"rates must be positive: {rates}")
    steps = sorted(set(rates))[:max_steps]
    for rate in steps:
        if int(rate * load.duration) < 1:
            raise ValueError(
                f"{rate} msg/s for {load.duration} s publishes nothing: "
                "raise the rate or the duration"
            )
    if server != "chatroom":
        from bench.compare import PEERS

        if server not in PEERS:
            raise ValueError(f"no server {server!r}; servers: chatroom, {', '.join(PEERS)}")
        if load.technique != "websocket":
            raise ValueError(f"peers speak WebSocket only, not {load.technique!r}")

    results: list[Result] = []
    for step, rate in enumerate(steps):
        step_load = dataclasses.replace(load, rate=rate, burst=0)
        if server == "chatroom":
            result = await run_chatroom(step_load, backend, workers, command)
            result.extra["backend"] = backend.split("://")[0]
            result.extra["workers"] = workers
        else:
            from bench.compare import run_peer

            result = await run_peer(step_load, server, command)
        reason = failure_reason(result, p99_limit_ms)
        result.extra.update(
            sweep=True, step=step, p99_limit_ms=p99_limit_ms, passed=not reason
        )
        if reason:
            result.extra["failed"] = reason
        results.append(result)
        if on_step is not None:
            on_step(result)
        if reason:
            break
    return results


def _passing_prefix(results: list[Result], p99_limit_ms: float) -> list[Result]:
    out = []
    for result in results:
        if not passed(result, p99_limit_ms):
            break
        out.append(result)
    return out


def knee(results: list[Result], p99_limit_ms: float = 100.0) -> Result | None:
    """The step with the most deliveries per second that passed; None if the first failed.

    Only steps before the first failure count (a sweep stops there anyway): a rate the
    server passed once after failing a lower one is luck, not capacity.
    """
    ok = _passing_prefix(results, p99_limit_ms)
    return max(ok, key=lambda r: r.deliveries_per_s) if ok else None


def first_failure(results: list[Result], p99_limit_ms: float = 100.0) -> Result | None:
    """The first step that did not pass; None if every step passed."""
    return next((r for r in results if not passed(r, p99_limit_ms)), None)


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def knee_table(rows: list[tuple[str, int, Result | None, Result | None]]) -> str:
    """Markdown, one row per sweep: (server, subscribers, knee, first failing step).

    For each sweep: `knee(results)` and `first_failure(results)`, with the same limit.
    """
    columns = [
        "server", "subs", "knee deliveries/s", "knee msg/s", "p99 ms at knee",
        "CPU us/delivery at knee", "first failing step",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for server, subscribers, at_knee, failing in rows:
        if at_knee is None:
            cells = ["below first step", "", "", ""]
        else:
            cells = [
                _number(at_knee.deliveries_per_s),
                f"{at_knee.rate:g}",
                f"{at_knee.p99_ms:g}",
                _number(at_knee.cpu_us_per_delivery, 2),
            ]
        if failing is None:
            failed = "not reached"
        else:
            failed = f"{failing.rate:g} msg/s, p99 {failing.p99_ms:g} ms"
            losses = _losses(failing)
            if losses:
                failed += f" ({', '.join(losses)})"
        lines.append("| " + " | ".join([server, str(subscribers), *cells, failed]) + " |")
    return "\n".join(lines)
