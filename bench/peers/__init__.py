"""Peer servers for `chatroom bench --compare`: WebSocket broadcast servers, one per library.

Each one broadcasts every text frame any client sends to every connected client,
binds 127.0.0.1 only, listens on `--port P`, and exits cleanly on SIGTERM. The
Python ones run on uvloop; `node_ws/` is Node.js with the `ws` package. The
registry that starts them is bench.compare.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["HOST", "parse_port", "run", "wait_for_sigterm"]

HOST = "127.0.0.1"


def parse_port(description: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    return int(parser.parse_args(argv).port)


async def wait_for_sigterm() -> None:
    """Return once SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(main: Callable[[int], Coroutine[Any, Any, None]], description: str) -> None:
    """Parse --port and run main(port) on uvloop (plain asyncio where uvloop is missing)."""
    port = parse_port(description)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(main(port))
