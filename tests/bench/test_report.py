"""How `chatroom bench` reports: the table with its ratio to the floor, and the median run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import orjson

from chatroom.bench.run import Load, Result, markdown, median_run


def run(server: str, cpu: float, *, rate: float = 20.0, lost: int = 0, p99: float = 10.0) -> Result:
    return Result(
        server=server, technique="websocket", subscribers=1000, rate=rate, duration=10.0,
        payload=100, sent=200, deliveries=200_000, cpu_us_per_delivery=cpu, p99_ms=p99,
        lost=lost,
    )


def test_the_table_gives_cpu_as_a_ratio_to_the_floor_at_the_same_load() -> None:
    table = markdown([
        run("chatroom", 9.0), run("floor", 6.0), run("chatroom", 8.0, rate=40),
        run("floor", 4.0, rate=40),
    ])
    lines = table.splitlines()
    assert "CPU vs floor" in lines[0]
    assert "| 1.50x |" in lines[2]
    assert "| 1.00x |" in lines[3]
    # matched by load, not the first floor row
    assert "| 2.00x |" in lines[4]


def test_without_a_floor_there_is_no_ratio_column() -> None:
    assert "CPU vs floor" not in markdown([run("chatroom", 9.0)])


def test_several_runs_give_each_figure_its_median_and_every_loss_counts() -> None:
    runs = [run("chatroom", 9.0, p99=30), run("chatroom", 7.0, lost=3), run("chatroom", 8.0)]
    row = median_run(runs)
    assert row.cpu_us_per_delivery == 8.0
    # the median of each figure on its own, not the p99 of the median-CPU run
    assert row.p99_ms == 10.0
    # a loss in any run is a loss of the row
    assert row.lost == 3
    assert row.extra["cpu_us_per_delivery_runs"] == [9.0, 7.0, 8.0]
    assert row.extra["p99_ms_runs"] == [30, 10.0, 10.0]
    # the runs themselves are left as they were
    assert runs[0].p99_ms == 30


def test_a_burst_counts_its_messages_not_rate_times_duration() -> None:
    assert Load(rate=20, duration=10).messages == 200
    assert Load(rate=20, duration=10, burst=300).messages == 300


def test_plot_draws_runs_from_json_lines_files(tmp_path: Path) -> None:
    from bench.plot import load_results, main

    lines = tmp_path / "runs.jsonl"
    runs = [run("chatroom", 9.0), run("floor", 6.0), run("chatroom", 8.0, rate=40)]
    lines.write_bytes(b"".join(orjson.dumps(asdict(r)) + b"\n" for r in runs))
    assert load_results([str(lines)]) == runs
    out = tmp_path / "plot.png"
    assert main([str(out), str(lines), "--p99-limit", "100"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
