"""One load-generating process: N subscribers of one technique; reports what they saw.

Driven over stdin/stdout by the orchestrator (chatroom.bench.run):
  stdin line 1: JSON config; stdout: "ready <n>"; stdin: "stop <sent>"; stdout: "done",
  with the result as JSON in config["result_file"].
"""

from __future__ import annotations

import asyncio
import base64
import sys
from typing import Any

import orjson

from chatroom.bench.wire import Tally, longpoll_loop, open_client

__all__ = ["main"]


async def _run(config: dict[str, Any]) -> dict[str, Any]:
    host, port = config["host"], int(config["port"])
    technique: str = config["technique"]
    count = int(config["count"])
    cookie: str = config["cookie"]
    path: str = config["path"]
    tally = Tally(expected_max=int(config.get("max_messages", 1 << 20)))
    transports: list[asyncio.Transport] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(100)

    async def one() -> None:
        async with gate:
            if technique == "longpolling":
                ready: asyncio.Future[None] = loop.create_future()
                tasks.append(
                    asyncio.create_task(
                        longpoll_loop(host, port, config["room"], cookie, tally, stop, ready)
                    )
                )
                await asyncio.wait_for(ready, 40)
            else:
                transports.append(await open_client(technique, host, port, path, cookie, tally))

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    print(f"ready {count - len(failures)}", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = (await reader.readline()).decode().split()
    sent = int(line[1]) if len(line) > 1 else 0
    stop.set()
    for transport in transports:
        transport.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "connections": count - len(failures),
        "connect_failures": len(failures),
        "first_failure": repr(failures[0]) if failures else None,
        "received": tally.received,
        "duplicates": tally.duplicates,
        "out_of_order": tally.out_of_order,
        "lost": tally.lost(sent) if sent else 0,
        "missing_sample": max(
            (tally.missing(c, sent) for c in range(len(tally.seen))), key=len, default=[]
        ),
        "closed_early": tally.closed,
        "latencies_us": base64.b64encode(tally.latencies_us.tobytes()).decode(),
    }


def main() -> None:
    config = orjson.loads(sys.stdin.buffer.readline())
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_run(config))
    # The result (every latency sample) goes to a file: a pipe cut it short at times.
    with open(config["result_file"], "wb") as f:
        f.write(orjson.dumps(result))
    sys.stdout.write("done\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
