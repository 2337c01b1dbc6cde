"""The sweep to the knee: which step is the knee, the table of knees, the plot, and one
short real sweep.

No timing is asserted: speed is for the benchmark to print, not for tests to judge.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.plot import plot
from bench.sweep import first_failure, knee, knee_table, ladder, passed, sweep

from chatroom.bench.run import Load, Result


def step(
    rate: float, p99_ms: float, *, subscribers: int = 100, server: str = "chatroom",
    cpu: float | None = 3.0, sweep_step: bool = True, **losses: int,
) -> Result:
    """A hand-made Result: every message delivered unless `losses` say otherwise."""
    sent = int(rate * 2)
    extra: dict[str, Any] = {"sweep": True} if sweep_step else {}
    return Result(
        server=server, technique="websocket", subscribers=subscribers, rate=rate,
        duration=2.0, payload=100, sent=sent, deliveries=sent * subscribers,
        deliveries_per_s=rate * subscribers, p50_ms=p99_ms / 4, p99_ms=p99_ms,
        p999_ms=p99_ms * 1.5, max_ms=p99_ms * 2, cpu_us_per_delivery=cpu,
        rss_kb_per_connection=4.0, command="chatroom bench --sweep", extra=extra, **losses,
    )


# --- knee ---------------------------------------------------------------------------


def test_the_knee_is_the_fastest_step_within_the_limit() -> None:
    steps = [step(10, 5), step(16, 8), step(25, 40), step(40, 250)]
    assert knee(steps, p99_limit_ms=100) is steps[2]
    assert first_failure(steps, p99_limit_ms=100) is steps[3]
    # a tighter limit moves the knee down
    assert knee(steps, p99_limit_ms=10) is steps[1]


def test_every_step_passing_makes_the_last_the_knee_and_no_failure() -> None:
    steps = [step(10, 5), step(16, 8)]
    assert knee(steps) is steps[1]
    assert first_failure(steps) is None


def test_a_p99_exactly_at_the_limit_passes() -> None:
    assert passed(step(10, 100.0), p99_limit_ms=100.0)
    assert not passed(step(10, 100.01), p99_limit_ms=100.0)


@pytest.mark.parametrize(
    "loss", ["lost", "duplicated", "out_of_order", "connect_failures"]
)
def test_a_lossy_step_never_counts_however_fast(loss: str) -> None:
    lossy = step(16, 6)
    setattr(lossy, loss, 1)
    steps = [step(10, 5), lossy]
    assert not passed(steps[1], p99_limit_ms=1e9)
    assert knee(steps, p99_limit_ms=1e9) is steps[0]
    assert first_failure(steps, p99_limit_ms=1e9) is steps[1]


def test_no_knee_when_the_first_step_fails() -> None:
    assert knee([step(10, 500)], p99_limit_ms=100) is None
    assert knee([step(10, 5, lost=3)]) is None
    assert knee([]) is None
    # nor does a later pass after a failure count: that was luck, not capacity
    assert knee([step(10, 500), step(16, 5)], p99_limit_ms=100) is None


def test_the_default_ladder_rises_from_about_5000_deliveries_per_second() -> None:
    rates = ladder(1000, duration=10, max_steps=8)
    assert len(rates) == 8
    assert rates[0] * 1000 == pytest.approx(5000, rel=0.01)
    assert all(b / a == pytest.approx(1.6, rel=0.02) for a, b in itertools.pairwise(rates))
    # never so slow that a step publishes nothing
    assert all(int(r * 3) >= 1 for r in ladder(1_000_000, duration=3))
    assert ladder(10, duration=1, max_steps=3) == [500, 800, 1280]


async def test_a_sweep_refuses_what_it_cannot_run() -> None:
    load = Load(subscribers=10, duration=1.0)
    with pytest.raises(ValueError, match="publishes nothing"):
        await sweep(load, "chatroom", [0.5], backend="memory://")
    with pytest.raises(ValueError, match="positive"):
        await sweep(load, "chatroom", [-1.0], backend="memory://")
    with pytest.raises(ValueError, match="no server"):
        await sweep(load, "no-such-server", [10.0], backend="memory://")
    with pytest.raises(ValueError, match="max_steps"):
        await sweep(load, "chatroom", [10.0], backend="memory://", max_steps=0)


# --- knee_table ------------------------------------------------------------------------


def test_the_knee_table_has_a_row_per_sweep() -> None:
    chatroom = [step(10, 5), step(16, 8, cpu=2.5), step(25, 250)]
    floor = [step(10, 2, server="floor"), step(16, 3, server="floor")]
    lossy = [step(10, 900, server="websockets", lost=7)]
    table = knee_table([
        ("chatroom", 100, knee(chatroom), first_failure(chatroom)),
        ("floor", 100, knee(floor), first_failure(floor)),
        ("websockets", 100, knee(lossy), first_failure(lossy)),
    ])
    header, rule, *rows = table.splitlines()
    assert header.startswith("| server | subs | knee deliveries/s |")
    assert "p99 ms at knee" in header
    assert "CPU us/delivery at knee" in header
    assert rule.count("---|") == header.count("|") - 1
    assert rows == [
        "| chatroom | 100 | 1,600 | 16 | 8 | 2.50 | 25 msg/s, p99 250 ms |",
        "| floor | 100 | 1,600 | 16 | 3 | 3.00 | not reached |",
        "| websockets | 100 | below first step |  |  |  | 10 msg/s, p99 900 ms (7 lost) |",
    ]


def test_the_knee_table_without_cpu_figures_says_so() -> None:
    at_knee = step(10, 5, cpu=None)
    (row,) = knee_table([("chatroom", 100, at_knee, None)]).splitlines()[2:]
    assert "| n/a |" in row


# --- plot ----------------------------------------------------------------------------------


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 0 and data.startswith(b"\x89PNG")


def test_plot_writes_a_png_of_sweeps(tmp_path: Path) -> None:
    results = [
        step(10, 5), step(16, 8), step(25, 250, lost=2),
        step(10, 2, server="floor"), step(16, 3, server="floor", cpu=None),
        step(5, 4, subscribers=1000), step(8, 60, subscribers=1000),
    ]
    out = tmp_path / "sweep.png"
    plot(results, str(out), p99_limit_ms=100)
    assert _is_png(out)


def test_plot_takes_single_runs_as_points(tmp_path: Path) -> None:
    results = [
        step(20, 5, sweep_step=False),
        step(20, 3, server="floor", sweep_step=False),
        # nothing for a log axis: no deliveries, no latency, no CPU
        Result(server="node-ws", technique="websocket", subscribers=100, rate=20,
               duration=2.0, payload=100),
    ]
    out = tmp_path / "runs.png"
    plot(results, str(out))
    assert _is_png(out)


def test_plot_of_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no results"):
        plot([], str(tmp_path / "empty.png"))


def test_plot_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[bench\]"):
        plot([step(10, 5)], str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


# --- a real sweep ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_short_real_sweep_counts_every_delivery_at_each_step() -> None:
    load = Load(subscribers=30, duration=1.0, drain=1.0, processes=1)
    seen: list[Result] = []
    results = await sweep(
        load, "chatroom", [10, 20], backend="memory://", command="test",
        p99_limit_ms=10_000, on_step=seen.append,
    )
    assert seen == results
    assert [r.rate for r in results] == [10, 20]
    for r in results:
        assert r.server == "chatroom"
        assert r.sent == int(r.rate * load.duration)
        assert r.deliveries == load.subscribers * r.sent
        assert (r.lost, r.duplicated, r.out_of_order, r.connect_failures) == (0, 0, 0, 0)
        assert r.extra["sweep"] is True
        assert r.extra["passed"] is True
    assert knee(results, p99_limit_ms=10_000) is results[1]
    assert first_failure(results, p99_limit_ms=10_000) is None
