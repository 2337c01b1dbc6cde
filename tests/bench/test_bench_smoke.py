"""The benchmark itself works: a short run of `chatroom bench` counts every delivery.

No timing is asserted: speed is for the benchmark to print, not for tests to judge.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest


@pytest.mark.slow
@pytest.mark.parametrize("technique", ["websocket", "sse", "longpolling"])
def test_a_short_bench_run_counts_every_delivery(technique: str, tmp_path: Path) -> None:
    subscribers, rate, duration = 60, 20, 2
    out = tmp_path / "runs.jsonl"
    run = subprocess.run(
        [
            sys.executable, "-m", "chatroom", "bench", "--technique", technique,
            "--subscribers", str(subscribers), "--rate", str(rate),
            "--duration", str(duration), "--processes", "1", "--json", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (line,) = out.read_text().splitlines()
    result = orjson.loads(line)
    sent = rate * duration
    assert result["sent"] == sent
    assert result["deliveries"] == subscribers * sent
    assert (result["lost"], result["duplicated"], result["out_of_order"]) == (0, 0, 0)
    assert result["connect_failures"] == 0
    assert result["cpu_us_per_delivery"] is not None
    # the printed report: a markdown table row and the command that made it
    assert f"| chatroom | {technique} | {subscribers} |" in run.stdout
    assert "measured with: chatroom bench" in run.stdout
