"""The stalled-readers tool in a tiny mode: it runs, and what it measures holds.

Small buffers (an 8 KiB socket send buffer, 32 KiB unsent in the process) make 20 stalled
clients pass the bound within 3 s of 1 KB messages at 50 a second (150 KB each), so the
run shows the cut-off itself, not only a bound not reached yet.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 20
SEND_BUFFER = 8192


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read sockets")
# each technique once, with each of the tool's two publishers
@pytest.mark.parametrize(
    ("technique", "publish"), [("websocket", "websocket"), ("sse", "longpoll")]
)
def test_stalled_readers_are_cut_off_and_the_good_client_misses_nothing(
    tmp_path: Path, technique: str, publish: str
) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "tests.tools.stalled_readers",
            "--clients", str(CLIENTS), "--technique", technique, "--publish", publish,
            "--send-buffer", str(SEND_BUFFER), "--max-unsent", "32768",
            "--seconds", "3", "--rate", "50", "--size", "1000",
            # a cut-off WebSocket is dropped 10 s after its close frame if it does not
            # answer: settle past that for it
            "--settle", "12" if technique == "websocket" else "1", "--json", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "command: python -m tests.tools.stalled_readers" in done.stdout
    figures = orjson.loads(out.read_bytes())

    # the good client got every message said, once, in order, with the stored ids
    good = figures["good"]
    assert figures["sent"] == 150
    assert not figures["publish_errors"]
    assert good["received"] == figures["sent"]
    assert good["lost"] == good["duplicates"] == good["out_of_order"] == 0
    assert good["wrong_ids"] == 0
    assert good["ended"] is None

    # every stalled client was let in, then cut off as too slow
    assert figures["opened"] == CLIENTS
    assert figures["baseline"]["states"] == {"ESTAB": CLIENTS}
    assert figures["cut_off"] == CLIENTS
    if technique == "websocket":
        # and once cut off, none is held on to
        assert sum(figures["end"]["states"].values()) == 0, figures["end"]["states"]
    # and none held more in the kernel than its capped send buffer allows
    assert figures["peak"]["sndbuf_max"] == 2 * SEND_BUFFER
    assert figures["kernel_bounded"]
    assert 0 < figures["peak"]["queued_max"] <= figures["kernel_bound"]
