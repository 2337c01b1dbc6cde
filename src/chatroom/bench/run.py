"""The benchmark orchestrator: start a server, connect subscribers, publish, report.

Latency is measured from each message's *intended* send time (an open-loop
schedule), so a publisher that falls behind cannot hide latency. Server CPU is
read from /proc (user + system time of the server and its worker processes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import orjson

from chatroom.bench.wire import Tally, encode_text, mask_frame, open_client

__all__ = ["Load", "Result", "Target", "add_arguments", "main", "measure", "run_chatroom"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class Load:
    technique: str = "websocket"
    subscribers: int = 200
    rate: float = 20.0
    duration: float = 10.0
    payload: int = 100
    processes: int = 2
    # seconds to wait after the last send for deliveries to finish
    drain: float = 2.0
    # if set, publish this many messages back to back instead of rate x duration
    burst: int = 0

    @property
    def messages(self) -> int:
        return self.burst or int(self.rate * self.duration)


@dataclass
class Result:
    server: str
    technique: str
    subscribers: int
    rate: float
    duration: float
    payload: int
    sent: int = 0
    deliveries: int = 0
    deliveries_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    cpu_us_per_delivery: float | None = None
    rss_kb_per_connection: float | None = None
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    connect_failures: int = 0
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- /proc ---------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (workers of a supervisor)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of pid and its descendants."""
    user = system = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / _CLK_TCK, system / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _descendants(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def percentile(sorted_values: array[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


# --- the server under test ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server at {url} did not become ready")
        time.sleep(0.1)


def start_chatroom(backend: str, workers: int, port: int) -> Any:
    import subprocess

    argv = [
        sys.executable, "-m", "chatroom", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--backend", backend, "--secret", "bench-secret-" + "0" * 32, "--workers", str(workers),
        # the publisher speaks for everyone, and every subscriber comes from one address:
        # lift the per-session and per-address limits
        "--rate-limit", "1000000", "--rate-burst", "1000000",
        "--address-rate-limit", "1000000", "--address-rate-burst", "1000000",
        "--demo-rate-limit", "1000000", "--demo-rate-burst", "1000000",
        "--max-connections", "100000", "--max-connections-per-address", "100000",
        "--max-connections-per-session", "100000",
        "--log-level", "WARNING",
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    _wait_ready(f"http://127.0.0.1:{port}")
    return proc


def login_cookie(base: str, user: str, room: str) -> str:
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    query = urllib.parse.urlencode({"user": user, "room": room, "demo": "websocket"})
    with opener.open(f"{base}/demo?{query}", timeout=10) as r:
        r.read()
    return "; ".join(f"{c.name}={c.value}" for c in jar)


# --- client processes ----------------------------------------------------------------



async def _spawn_clients(
    load: Load, host: str, port: int, path: str, room: str, cookie: str, max_messages: int
) -> list[tuple[asyncio.subprocess.Process, Path]]:
    """Start the client processes; each with the file it writes its result to."""
    procs: list[asyncio.subprocess.Process] = []
    files: list[Path] = []
    share = [load.subscribers // load.processes] * load.processes
    for i in range(load.subscribers % load.processes):
        share[i] += 1
    for count in share:
        if not count:
            continue
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatroom.bench.client",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            # the result line carries every latency sample
            limit=1 << 28,
        )
        assert proc.stdin is not None
        config = {
            "host": host, "port": port, "technique": load.technique, "count": count,
            "cookie": cookie, "path": path, "room": room, "max_messages": max_messages,
            "result_file": os.path.join(
                tempfile.gettempdir(), f"chatroom-bench-{os.getpid()}-{len(procs)}.json"
            ),
        }
        proc.stdin.write(orjson.dumps(config) + b"\n")
        await proc.stdin.drain()
        procs.append(proc)
        files.append(Path(str(config["result_file"])))
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        if not line.startswith(b"ready"):
            raise RuntimeError(f"client process failed to start: {line!r}")
    return list(zip(procs, files, strict=True))


async def _collect(
    clients: list[tuple[asyncio.subprocess.Process, Path]], sent: int
) -> list[dict[str, Any]]:
    results = []
    for proc, _ in clients:
        assert proc.stdin is not None
        proc.stdin.write(f"stop {sent}\n".encode())
        await proc.stdin.drain()
    for proc, path in clients:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"done":
            raise RuntimeError(f"client process {proc.pid} failed: {line[:200]!r}")
        data = await asyncio.to_thread(path.read_bytes)
        await asyncio.to_thread(path.unlink)
        results.append(orjson.loads(data))
        await proc.wait()
    return results


# --- publishing ------------------------------------------------------------------------


async def _publish(
    load: Load, host: str, port: int, path: str, cookie: str, frame_kind: str
) -> int:
    """Send rate*duration messages on an open-loop schedule; returns how many were sent."""
    tally = Tally(expected_max=8)
    technique = "socketio" if frame_kind == "socketio" else "websocket"
    transport = await open_client(technique, host, port, path, cookie, tally)
    total = load.messages
    # a burst: every message is due at once, so each one's latency counts from the start
    interval_ns = 0 if load.burst else int(1e9 / load.rate)
    start = time.monotonic_ns() + 50_000_000
    for seq in range(total):
        intended = start + seq * interval_ns
        delay = (intended - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        text = encode_text(seq, intended, load.payload)
        payload = orjson.dumps(text) if frame_kind == "json" else text.encode()
        if frame_kind == "socketio":
            payload = b"42" + orjson.dumps(["message", text])
        transport.write(mask_frame(payload))
    # A burst is CPU-bound on the server: allow it time to deliver it all (30 us each).
    await asyncio.sleep(load.drain + (3e-5 * total * load.subscribers if load.burst else 0))
    transport.close()
    return total


def summarise(
    name: str, load: Load, sent: int, results: list[dict[str, Any]], cpu: float | None,
    rss_per_conn: float | None, command: str, system: float | None = None,
) -> Result:
    """The figures of one run; `cpu` is the server's CPU seconds, `system` the kernel's part."""
    latencies = array("f")
    for r in results:
        latencies.frombytes(base64.b64decode(r["latencies_us"]))
    ordered = array("f", sorted(latencies))
    deliveries = sum(r["received"] for r in results)
    # a burst is over when its last delivery lands
    window = (float(ordered[-1]) / 1e6 if ordered else 0.0) if load.burst else load.duration
    return Result(
        server=name,
        technique=load.technique,
        subscribers=load.subscribers,
        rate=0.0 if load.burst else load.rate,
        duration=0.0 if load.burst else load.duration,
        payload=load.payload,
        sent=sent,
        deliveries=deliveries,
        deliveries_per_s=round(deliveries / window, 1) if window else 0.0,
        p50_ms=round(percentile(ordered, 0.50) / 1000, 2),
        p99_ms=round(percentile(ordered, 0.99) / 1000, 2),
        p999_ms=round(percentile(ordered, 0.999) / 1000, 2),
        max_ms=round(float(ordered[-1]) / 1000 if ordered else 0.0, 2),
        cpu_us_per_delivery=round(cpu * 1e6 / deliveries, 2) if cpu and deliveries else None,
        rss_kb_per_connection=round(rss_per_conn / 1024, 2) if rss_per_conn else None,
        lost=sum(r["lost"] for r in results),
        duplicated=sum(r["duplicates"] for r in results),
        out_of_order=sum(r["out_of_order"] for r in results),
        connect_failures=sum(r["connect_failures"] for r in results),
        command=command,
        extra={
            "missing_sample": next((r["missing_sample"] for r in results if r["lost"]), []),
            "closed_early": sum(r["closed_early"] for r in results),
            # the kernel's part of the CPU per delivery (sending, and loopback receiving)
            "cpu_sys_us_per_delivery": (
                round(system * 1e6 / deliveries, 2) if system is not None and deliveries else None
            ),
        },
    )


@dataclass
class Target:
    """A running server under test, and how its subscribers and publisher reach it."""

    pid: int
    port: int
    sub_path: str
    pub_path: str
    # the client technique the subscribers speak ("websocket", "sse", "longpolling",
    # "socketio"), which may differ from the load's when a peer frames WebSocket its way
    sub_technique: str
    # the publisher's framing (see _publish): "json", "text" or "socketio"
    frame_kind: str
    room: str = ""
    sub_cookie: str = ""
    pub_cookie: str = ""
    host: str = "127.0.0.1"


async def measure(load: Load, target: Target, name: str, command: str = "") -> Result:
    """Run the load against a started server: connect the subscribers, publish, collect.

    Server CPU is read over the publishing window, RSS before and after the
    subscribers connected. Client processes left behind by a failure are killed.
    """
    clients: list[tuple[asyncio.subprocess.Process, Path]] = []
    collected = False
    try:
        rss0 = rss_bytes(target.pid)
        clients = await _spawn_clients(
            dataclasses.replace(load, technique=target.sub_technique), target.host,
            target.port, target.sub_path, target.room, target.sub_cookie, load.messages,
        )
        await asyncio.sleep(0.5)
        rss1 = rss_bytes(target.pid)
        user0, sys0 = cpu_times(target.pid)
        sent = await _publish(
            load, target.host, target.port, target.pub_path, target.pub_cookie,
            target.frame_kind,
        )
        user1, sys1 = cpu_times(target.pid)
        results = await _collect(clients, sent)
        collected = True
        # all it used since it started: proof that /proc accounting sees the server,
        # even when the publishing window is under one clock tick
        cpu_total = cpu_seconds(target.pid)
    finally:
        if not collected:
            for client, _ in clients:
                if client.returncode is None:
                    client.kill()
                    await client.wait()
    result = summarise(
        name, load, sent, results, user1 + sys1 - user0 - sys0,
        (rss1 - rss0) / max(1, load.subscribers), command, sys1 - sys0,
    )
    result.extra["server_cpu_total_s"] = cpu_total
    return result


async def run_chatroom(
    load: Load, backend: str, workers: int = 1, command: str = "", name: str = "chatroom"
) -> Result:
    """Start chatroom, run the load, stop it; the figures as a Result."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await asyncio.to_thread(start_chatroom, backend, workers, port)
    try:
        room = f"bench-{os.getpid()}-{port}"
        paths = {
            "websocket": f"/websocket/room/socket?room={room}",
            "sse": f"/sse/room/events?room={room}",
            "longpolling": f"/longpolling/room/messages?room={room}",
        }
        target = Target(
            pid=proc.pid, port=port, sub_path=paths[load.technique],
            pub_path=paths["websocket"], sub_technique=load.technique, frame_kind="json",
            room=room,
            sub_cookie=await asyncio.to_thread(login_cookie, base, "bench-sub", room),
            pub_cookie=await asyncio.to_thread(login_cookie, base, "bench-pub", room),
        )
        return await measure(load, target, name, command)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)


# --- output ------------------------------------------------------------------------------

_COLUMNS = [
    ("server", "server"), ("technique", "technique"), ("subscribers", "subs"),
    ("rate", "msg/s"), ("deliveries_per_s", "deliveries/s"), ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"), ("max_ms", "max ms"),
    ("cpu_us_per_delivery", "CPU us/delivery"), ("rss_kb_per_connection", "KB/conn"),
    ("lost", "lost"), ("duplicated", "dup"), ("out_of_order", "reordered"),
]


def markdown(results: list[Result]) -> str:
    """One row per run; with floor runs among them, CPU as a ratio to the floor's at the
    same load too."""
    floors = {
        (r.subscribers, r.rate, r.technique): r.cpu_us_per_delivery
        for r in results
        if r.server == "floor" and r.cpu_us_per_delivery
    }
    columns = list(_COLUMNS)
    if floors:
        columns.insert(10, ("cpu_vs_floor", "CPU vs floor"))
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in results:
        row = asdict(r)
        floor = floors.get((r.subscribers, r.rate, r.technique))
        if floor and r.cpu_us_per_delivery:
            row["cpu_vs_floor"] = f"{r.cpu_us_per_delivery / floor:.2f}x"
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in columns) + " |")
    return "\n".join(lines)


_MEDIANS = (
    "deliveries_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "cpu_us_per_delivery",
    "rss_kb_per_connection",
)
_LOSSES = ("lost", "duplicated", "out_of_order", "connect_failures")


def median_run(runs: list[Result]) -> Result:
    """Several runs of one server as one row: each figure the median of its runs (the
    middle one of three), every loss of every run summed; each run's figures in extra."""
    if len(runs) == 1:
        return runs[0]
    row = dataclasses.replace(runs[0], extra=dict(runs[0].extra))
    row.extra["runs"] = len(runs)
    for key in _MEDIANS:
        values = [getattr(r, key) for r in runs]
        row.extra[f"{key}_runs"] = values
        known = sorted(v for v in values if v is not None)
        setattr(row, key, known[(len(known) - 1) // 2] if known else None)
    sys_values = sorted(
        r.extra["cpu_sys_us_per_delivery"] for r in runs
        if r.extra.get("cpu_sys_us_per_delivery") is not None
    )
    if sys_values:
        row.extra["cpu_sys_us_per_delivery"] = sys_values[(len(sys_values) - 1) // 2]
    for key in _LOSSES:
        setattr(row, key, sum(getattr(r, key) for r in runs))
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The load: what `chatroom bench` and the repository's `python -m bench` share."""
    parser.add_argument("--technique", default="websocket", type=_techniques,
                        help="websocket, sse or longpolling; several, comma-separated, "
                        "are measured in turn in one run")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    parser.add_argument("--burst", type=int, default=0,
                        help="publish this many messages back to back instead (rate ignored)")
    parser.add_argument("--payload", type=int, default=100, help="message text size in bytes")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--backend", default="",
                        help="backend URL for the server (default: SQLite in a temp dir)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1,
                        help="runs per server, interleaved; each figure is their median")
    parser.add_argument("--json", default="", help="append one JSON line per run to this file")


def build_parser(prog: str = "chatroom bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure fan-out: start chatroom on 127.0.0.1, connect subscribers from "
        "separate processes, publish, and report deliveries/s, latency, CPU per delivery "
        "and memory per connection. Comparing with other servers (--compare), sweeping to "
        "the knee (--sweep) and plotting live in the repository's bench/ folder: "
        "python -m bench.",
    )
    add_arguments(parser)
    return parser


TECHNIQUES = ("websocket", "sse", "longpolling")


def _techniques(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TECHNIQUES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown technique(s) {', '.join(unknown) or spec!r}; choose from "
            + ", ".join(TECHNIQUES)
        )
    return names


def load_of(args: argparse.Namespace) -> Load:
    techniques: list[str] = args.technique
    return Load(
        technique=techniques[0], subscribers=args.subscribers, rate=args.rate,
        duration=args.duration, payload=args.payload, processes=max(1, args.processes),
        burst=max(0, args.burst),
    )


Runner = Callable[[Load, str], Awaitable[Result]]


async def measure_all(
    load: Load, techniques: list[str], backend: str, workers: int, runs: int, command: str,
    others: Sequence[tuple[str, Runner]] = (),
) -> list[Result]:
    """Every technique of chatroom, then each other server, `runs` times interleaved (so
    drift in the machine's state touches every server alike); the median run of each."""
    per_server: dict[tuple[str, str], list[Result]] = {}
    for _ in range(runs):
        for technique in techniques:
            result = await run_chatroom(
                dataclasses.replace(load, technique=technique), backend, workers, command
            )
            result.extra["backend"] = backend.split("://")[0]
            result.extra["workers"] = workers
            per_server.setdefault(("chatroom", technique), []).append(result)
        for name, run in others:
            per_server.setdefault((name, "websocket"), []).append(await run(load, command))
    return [median_run(r) for r in per_server.values()]


def report(result: Result, json_path: str) -> None:
    line = orjson.dumps(asdict(result)).decode()
    print(line, flush=True)
    if json_path:
        with open(json_path, "a") as f:
            f.write(line + "\n")


def chatroom_failed(results: list[Result]) -> bool:
    """chatroom must deliver everything; a peer that falls behind is a finding, shown."""
    return any(
        r.lost or r.duplicated or r.out_of_order or r.connect_failures
        for r in results
        if r.server == "chatroom"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "chatroom bench " + shlex.join(sys.argv[2:] if argv is None else list(argv))
    with tempfile.TemporaryDirectory(prefix="chatroom-bench-") as tmp:
        backend = args.backend or f"sqlite:///{tmp}/bench.db"
        results = asyncio.run(
            measure_all(
                load_of(args), args.technique, backend, args.workers, max(1, args.runs),
                command,
            )
        )
    for result in results:
        report(result, args.json)
    print()
    print(markdown(results))
    print(f"\nmeasured with: {command}")
    return 1 if chatroom_failed(results) else 0
