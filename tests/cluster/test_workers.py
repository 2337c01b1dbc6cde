"""`chatroom serve --workers N`: N processes on one port with Redis; refused without it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.cluster.nodes import (
    Cluster,
    WSFeed,
    login,
    new_client,
    say_lp,
    wait_exit,
    wait_ready,
)
from tests.redis_server import free_port
from tests.support import eventually

ROOM = "workers"
_WS_GAUGE = re.compile(r'^chatroom_connections\{technique="websocket"\} (\S+)$', re.M)


@pytest.mark.redis
async def test_two_workers_share_one_port_and_one_chat(cluster: Cluster) -> None:
    (node,) = await cluster.start(1, workers=2)
    await eventually(lambda: len(node.children()) >= 2, within=10, why=node.log)
    workers = node.children()
    assert len(workers) == 2
    assert node.pid not in workers
    # both must listen before connections can reach both
    await eventually(
        lambda: node.log().count("chatroom serving on") >= 2, within=10, why=node.log
    )
    async with new_client() as alice, new_client() as bob:
        await login(alice, node, "alice", ROOM, "websocket")
        page = await login(bob, node, "bob", ROOM)
        ws = await WSFeed.open(alice, node, ROOM)
        try:
            # whichever worker bob's say lands on, alice's socket on one of them gets it
            for i in range(4):
                await say_lp(bob, node, ROOM, page.csrf, f"hello-{i}")
            await ws.wait_text("hello-3")
            assert ws.texts()[-4:] == [f"hello-{i}" for i in range(4)]

            # each fresh connection lands on one worker or the other: only one of them
            # holds alice's socket, so /metrics answers differ by who answered
            gauges: set[float] = set()
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                for _ in range(40):
                    async with http.get(f"{node.url}/metrics") as response:
                        found = _WS_GAUGE.search(await response.text())
                    assert found, "no websocket gauge in /metrics"
                    gauges.add(float(found.group(1)))
                    if len(gauges) == 2:
                        break
            assert gauges == {0.0, 1.0}, "every connection reached the same process"
        finally:
            await ws.close()
    log = node.log()
    assert f"supervising 2 workers on port {node.port}" in log
    assert len(set(re.findall(r"\(pid (\d+)\)", log))) == 2, log

    # a worker that dies is replaced, and the port keeps answering
    os.kill(workers[0], signal.SIGKILL)

    def replaced() -> bool:
        now = node.children()
        return len(now) == 2 and workers[0] not in now

    await eventually(replaced, within=15, why=lambda: f"{node.children()}\n{node.log()}")
    now = node.children()
    await wait_ready(node)
    assert f"worker {workers[0]} exited" in node.log()

    # SIGTERM to the supervisor stops every worker, and it exits cleanly
    node.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(node.proc, 15) == 0, node.log()
    alive = [pid for pid in [*now, workers[1]] if _exists(pid)]
    assert not alive, f"workers outlived their supervisor: {alive}"


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("backend", ["sqlite:///chat.db", "memory://"])
async def test_workers_refuse_a_backend_that_lives_in_one_process(
    backend: str, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatroom", "serve", "--workers", "2",
        "--host", "127.0.0.1", "--port", str(free_port()),
        "--backend", backend, "--secret", "s" * 32,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode != 0
    message = err.decode()
    assert "--workers 2 needs a backend every process can share" in message, message
    assert backend in message
    assert "redis://" in message
    assert not out
    # nothing was started or created
    assert not (tmp_path / "chat.db").exists()

