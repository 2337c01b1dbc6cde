"""The soak: hundreds of clients on every technique, faults injected, a ledger checked.

    python -m tests.soak                          # short: SQLite, 80 clients, 30 s
    python -m tests.soak --backend redis          # two nodes on a Redis with persistence
    python -m tests.soak --minutes 10 --clients 320

The run, in phases:

1. start the servers (tests/soak/servers.py) on 127.0.0.1, with the per-address and
   per-session limits raised where `chatroom serve` has them;
2. the clients enter (/demo) over a short ramp, then say, read, drop and resume, leave
   and come back, for the run's duration; meanwhile the faults are injected (in the
   first half) and the flood room floods (slow readers stall and are cut off);
3. no new says: every client's pending say is retried until answered; then each room's
   head is read and every client reads on until it has it;
4. history is read back from the server (pages of 500) and every ledger is checked
   against it (tests/soak/ledger.py); the servers' memory, sampled from /proc all
   along, is compared between the two halves of the steady span (from the last
   fault's recovery to the end of saying).

The report prints what was checked and every violation; the exit status is 1 if any.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.soak.clients import TECHNIQUES, Client, Context, make_client
from tests.soak.ledger import Findings, History, check
from tests.soak.servers import Fault, Fleet, Sample, serve_flags, soak_flags

__all__ = ["Config", "Report", "main", "soak"]

ABBREV = {"websocket": "ws", "sse": "sse", "longpolling": "lp", "refresh": "ar"}
FLOOD_ROOM = "soak-0"


@dataclass
class Config:
    backend: str = "sqlite"
    # Redis without persistence: its restarts lose every stream (resets expected)
    lossy: bool = False
    clients: int = 80
    rooms: int = 3
    # seconds of saying (phase 2)
    duration: float = 30.0
    # faults injected in the first half of phase 2, evenly spread
    faults: int = 2
    # floods of the flood room, evenly spread (not at a fault)
    floods: int = 1
    slow: int = 4
    firehoses: int = 2
    # a flood must pass what a stalled connection holds, on both ways the server cuts a
    # subscriber off: its 1 MiB of unsent bytes (--max-unsent) past its socket's send
    # buffer (--socket-send-buffer, 64 KiB) and the client's buffers; or 1024 events
    # waiting (--max-pending) while it is busy: 2 x 800 x 2 KB
    flood_messages: int = 800
    flood_size: int = 1990
    stall: float = 30.0
    ramp: float = 3.0
    pace: tuple[float, float] = (2.0, 5.0)
    sample_every: float = 1.0
    seed: int = 1
    # how long a fault keeps a server down before it is started again
    down: tuple[float, float] = (0.5, 2.0)
    workdir: Path | None = None
    verbose: bool = True
    # resident memory growth between the two steady windows counted as a leak: more
    # than this fraction AND more than leak_mb
    leak_fraction: float = 0.25
    leak_mb: float = 24.0


@dataclass
class RssVerdict:
    label: str
    pid: int
    start_mb: float
    end_mb: float
    # medians of the two halves of the steady span (after the last fault), if it lived
    # through enough of it
    window1_mb: float | None
    window2_mb: float | None
    leak: bool


@dataclass
class Report:
    config: dict[str, Any]
    clients: Counter[str]
    findings: Findings
    faults: list[Fault]
    stats: Counter[str]
    anomalies: Counter[str]
    anomaly_examples: dict[str, str]
    client_errors: list[str]
    server_log_problems: list[str]
    rss: list[RssVerdict]
    samples: list[Sample]
    seconds: float
    server_flags: list[str] = field(default_factory=list)
    # subscribers the servers cut off as too slow (their /metrics, summed over processes)
    server_cut_off: int = 0

    @property
    def faults_survived(self) -> int:
        return sum(f.survived for f in self.faults)

    @property
    def error_answers(self) -> int:
        """Answers that are a server's bug, not a fault's doing: a 5xx other than 503
        (which the soak counts apart, as expected in an outage), a close with 1011."""
        return sum(
            n for kind, n in self.anomalies.items()
            if "answered 5" in kind or "closed 1011" in kind
        )

    @property
    def server_errors(self) -> int:
        """Error answers, and ERROR records in the node logs (often the same errors,
        seen from both sides)."""
        return self.error_answers + len(self.server_log_problems)

    @property
    def ok(self) -> bool:
        return (
            self.findings.violations == 0
            and not self.client_errors
            and self.server_errors == 0
            and self.faults_survived == len(self.faults)
            and not any(r.leak for r in self.rss)
        )

    def text(self) -> str:
        f = self.findings
        lines = [
            f"soak: {self.config['backend']}, {sum(self.clients.values())} clients ("
            + ", ".join(f"{n} {t}" for t, n in sorted(self.clients.items()))
            + f") in {self.config['rooms']} rooms, {self.config['duration']:.0f} s of saying,"
            f" {self.seconds:.0f} s in all",
            f"server flags: {' '.join(self.server_flags)}",
            f"messages accepted: {f.accepted} (said {f.said}, refused {f.refused}, "
            f"never answered {f.unanswered})",
            f"deliveries checked: {f.deliveries} (events streamed or polled, and "
            f"{f.pages} Active Refresh pages)",
            f"faults injected: {len(self.faults)}, survived: {self.faults_survived}",
        ]
        for fault in self.faults:
            back = f"back in {fault.back_after:.1f} s" if fault.back_after else "NOT BACK"
            if fault.alive_after is not None:
                back = f"listening after {fault.alive_after:.1f} s, /readyz 200 after " + (
                    f"{fault.back_after:.1f} s" if fault.back_after else "NEVER"
                )
            lines.append(f"  at {fault.t:6.1f} s  {fault.what}: {back}")
        lines.append(
            f"losses: {f.lost}   duplicates: {f.duplicates}   order violations: {f.disorder}"
        )
        lines.append(
            f"mismatched: {f.mismatched}   phantoms: {f.phantoms}   resets told: {f.resets} "
            f"(unexpected {f.unexpected_resets})   new streams without a reset: {f.unannounced}"
        )
        if f.lost_with_stream or f.unverifiable:
            lines.append(
                f"taken by the streams lost on purpose: {f.lost_with_stream} accepted messages,"
                f" {f.unverifiable} events received before (not in history to check)"
            )
        for kind, examples in sorted(f.examples.items()):
            for example in examples:
                lines.append(f"  {kind}: {example}")
        lines.append(f"slow subscribers the servers cut off: {self.server_cut_off}")
        lines.append(
            "client events: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items()))
        )
        if self.anomalies:
            lines.append("unexpected answers:")
            for kind, n in sorted(self.anomalies.items()):
                lines.append(f"  {n} x {kind}: {self.anomaly_examples.get(kind, '')[:200]!r}")
        if self.client_errors:
            lines.append(f"client errors: {len(self.client_errors)}")
            lines += [f"  {e}" for e in self.client_errors[:10]]
        lines.append(
            f"server errors: {self.error_answers} answers (5xx but 503, close 1011), "
            f"{len(self.server_log_problems)} ERROR records in the node logs"
        )
        if self.server_log_problems:
            lines += [f"  {p}" for p in self.server_log_problems[:10]]
        lines.append("RSS (resident memory) of the server processes:")
        for r in self.rss:
            windows = (
                f"steady windows {r.window1_mb:.1f} -> {r.window2_mb:.1f} MB"
                if r.window1_mb is not None and r.window2_mb is not None
                else "not alive through enough of the steady span"
            )
            lines.append(
                f"  {r.label} pid {r.pid}: start {r.start_mb:.1f} MB, end {r.end_mb:.1f} MB, "
                f"{windows}{'  LEAK' if r.leak else ''}"
            )
        lines.append("RSS samples (s: MB):")
        by_proc: dict[tuple[str, int], list[Sample]] = {}
        for s in self.samples:
            by_proc.setdefault((s.label, s.pid), []).append(s)
        for (label, pid), samples in by_proc.items():
            row = " ".join(f"{s.t:.0f}:{s.rss_kb / 1024:.1f}" for s in samples)
            lines.append(f"  {label} pid {pid}: {row}")
        lines.append("verdict: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        f = self.findings
        return {
            "backend": self.config["backend"],
            "clients": sum(self.clients.values()),
            "accepted": f.accepted,
            "deliveries": f.deliveries,
            "faults": len(self.faults),
            "faults_survived": self.faults_survived,
            "lost": f.lost,
            "duplicates": f.duplicates,
            "disorder": f.disorder,
            "mismatched": f.mismatched,
            "phantoms": f.phantoms,
            "unexpected_resets": f.unexpected_resets,
            "unannounced": f.unannounced,
            "lost_with_stream": f.lost_with_stream,
            "unanswered": f.unanswered,
            "server_errors": self.server_errors,
            "client_errors": len(self.client_errors),
            "server_cut_off": self.server_cut_off,
            "rss": [asdict(r) for r in self.rss],
            "stats": dict(self.stats),
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
        }


def plan(config: Config, ctx: Context) -> list[Client]:
    """Who is who: techniques round-robin, rooms spread, roles in the flood room."""
    clients: list[Client] = []
    rng = random.Random(config.seed)
    tag = "".join(rng.choices("abcdefghjkmnpqrstuvwxyz", k=3))
    for i in range(config.clients):
        technique = TECHNIQUES[i % len(TECHNIQUES)]
        room = f"soak-{(i // len(TECHNIQUES)) % config.rooms}"
        name = f"{ABBREV[technique]}{i:03d}{tag}"
        address = f"127.0.{i // 248}.{2 + i % 248}"
        seed = rng.getrandbits(32)
        clients.append(make_client(technique, ctx, i, name, room, address, "normal", seed))
    flood = [c for c in clients if c.room == FLOOD_ROOM]
    ws = [c for c in flood if c.technique == "websocket"]
    sse = [c for c in flood if c.technique == "sse"]
    for c in ws[: config.firehoses]:
        c.role = "firehose"
    slow_ws = ws[config.firehoses : config.firehoses + (config.slow + 1) // 2]
    slow_sse = sse[: config.slow // 2]
    for c in slow_ws + slow_sse:
        c.role = "slow"
    ctx.firehoses = sum(c.role == "firehose" for c in clients)
    return clients


# After a fault, how long the servers take to settle (reconnects, backlogs replayed)
# before their memory counts as steady.
SETTLE = 30.0


def rss_verdicts(
    samples: Sequence[Sample], config: Config, steady: tuple[float, float]
) -> list[RssVerdict]:
    """Per server process: start and end, and its two steady windows compared.

    `steady` is the span (seconds into the run) of steady load: from the last fault's
    recovery (and SETTLE more) to the end of saying. Its two halves carry the same load
    (clients saying, dropping, the floods), so growth between them is memory kept that
    should not be. A process that did not live through enough of it is not judged.
    """
    lives: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        lives.setdefault((s.label, s.pid), []).append(s)
    verdicts = []
    for (label, pid), life in lives.items():
        rss = [s.rss_kb / 1024 for s in life]
        settled = [s.rss_kb / 1024 for s in life if steady[0] <= s.t <= steady[1]]
        w1 = w2 = None
        leak = False
        if len(settled) >= 12 and label != "redis":
            mid = len(settled) // 2
            w1, w2 = statistics.median(settled[:mid]), statistics.median(settled[mid:])
            leak = w2 - w1 > max(config.leak_fraction * w1, config.leak_mb)
        verdicts.append(RssVerdict(label, pid, rss[0], rss[-1], w1, w2, leak))
    return verdicts


async def read_history(http: aiohttp.ClientSession, url: str, room: str) -> History:
    """A room's whole history, paging back 500 at a time."""
    pages: list[list[dict[str, Any]]] = []
    before: str | None = None
    for _ in range(100_000):
        params = {"limit": "500"}
        if before is not None:
            params["before"] = before
        async with http.get(f"{url}/api/rooms/{room}/history", params=params) as response:
            body = orjson.loads(await response.read())
            if response.status != 200:
                raise RuntimeError(f"history of {room}: {response.status} {body}")
        events: list[dict[str, Any]] = body["events"]
        if not events:
            break
        pages.append(events)
        before = body["before"]
    events = [e for page in reversed(pages) for e in page]
    return History.of(room, events)


async def head_of(http: aiohttp.ClientSession, url: str, room: str) -> str | None:
    async with http.get(f"{url}/api/rooms/{room}/history", params={"limit": "1"}) as response:
        body = orjson.loads(await response.read())
    events = body.get("events") or []
    return str(events[-1]["id"]) if events else None


class Soak:
    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.flags = soak_flags(serve_flags())
        self.fleet = Fleet(config.backend, workdir, self.flags, lossy=config.lossy)
        self.t0 = time.monotonic()

    def log(self, text: str) -> None:
        if self.config.verbose:
            print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)

    async def run(self) -> Report:
        config = self.config
        fleet = self.fleet
        await fleet.start()
        self.log(f"{config.backend}: nodes on ports {fleet.ports}; flags {' '.join(self.flags)}")
        budget = config.ramp + config.duration + 180.0
        ctx = Context(
            ports=list(fleet.ports),
            hard_deadline=time.monotonic() + budget,
            flood_messages=config.flood_messages,
            flood_size=config.flood_size,
            stall=config.stall,
            pace=config.pace,
        )
        clients = plan(config, ctx)
        sampler = asyncio.create_task(self._sample())
        tasks: dict[Client, asyncio.Task[None]] = {}
        errors: list[str] = []
        try:
            for c in clients:
                tasks[c] = asyncio.create_task(c.run(), name=c.name)
                await asyncio.sleep(config.ramp / max(1, len(clients)))
            self.log(f"{len(clients)} clients started")
            await self._phase_two(ctx, clients, tasks)
            ctx.stop_saying.set()
            said_until = fleet.now()
            self.log("no new says: waiting for every pending say to be answered")
            await asyncio.wait([asyncio.create_task(c.talked.wait()) for c in clients], timeout=90)
            async with aiohttp.ClientSession() as http:
                for room in sorted({c.room for c in clients}):
                    head = await self._retry(lambda r=room: head_of(http, ctx.url(0), r))
                    if head is not None:
                        ctx.targets[room] = head
            ctx.targets_set.set()
            self.log(f"every client reads on to the heads {ctx.targets}")
            await asyncio.wait(tasks.values(), timeout=ctx.finish_within + 15.0)
        finally:
            for c, task in tasks.items():
                if not task.done():
                    task.cancel()
                    errors.append(f"{c.name}: still running at the end")
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        for c, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError
            ):
                where = traceback.extract_tb(result.__traceback__)[-3:]
                errors.append(
                    f"{c.name}: {result!r} at "
                    + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(where))
                )
        self.log("reading history back")
        histories: dict[str, History] = {}
        async with aiohttp.ClientSession() as http:
            for room in sorted({c.room for c in clients}):
                histories[room] = await self._retry(
                    lambda r=room: read_history(http, ctx.url(0), r)
                )
        findings = check(
            [c.ledger for c in clients],
            histories,
            streams_lost=[f.restarted_at or f.at for f in fleet.faults if f.lost_streams],
        )
        return Report(
            config={**asdict(config), "workdir": str(self.workdir)},
            clients=Counter(c.technique for c in clients),
            findings=findings,
            faults=fleet.faults,
            stats=ctx.stats,
            anomalies=ctx.anomalies,
            anomaly_examples=ctx.anomaly_examples,
            client_errors=errors,
            server_log_problems=fleet.log_problems(),
            rss=rss_verdicts(fleet.samples, config, (self._settled(), said_until)),
            samples=fleet.samples,
            seconds=time.monotonic() - self.t0,
            server_flags=self.flags,
            server_cut_off=sum(fleet.cut_off.values()),
        )

    async def _phase_two(
        self, ctx: Context, clients: list[Client], tasks: dict[Client, asyncio.Task[None]]
    ) -> None:
        """Say for the run's duration; inject the faults and the floods on a schedule."""
        config = self.config
        start = time.monotonic()
        events: list[tuple[float, str]] = []
        for k in range(config.faults):
            # the first half, after a warm-up: the last half stays steady for memory
            events.append((config.duration * (0.15 + 0.35 * (k + 0.5) / config.faults), "fault"))
        for k in range(config.floods):
            events.append((config.duration * (0.1 + 0.8 * (k + 0.7) / config.floods), "flood"))
        events.sort()
        kinds = self._fault_kinds()
        done = 0
        progress = start
        for at, kind in events:
            while time.monotonic() - start < at:
                await asyncio.sleep(min(1.0, at - (time.monotonic() - start)))
                if time.monotonic() - progress >= 10:
                    progress = time.monotonic()
                    self._progress(ctx, clients)
            if kind == "flood":
                self.log(f"flood {ctx.flood_no + 1} in {FLOOD_ROOM}")
                ctx.begin_flood()
            else:
                what = kinds[done % len(kinds)]
                done += 1
                fault = await self._inject(what)
                back = f"back after {fault.back_after:.1f} s" if fault.survived else "NOT BACK"
                self.log(f"fault: {fault.what}, {back}")
        while time.monotonic() - start < config.duration:
            await asyncio.sleep(min(1.0, config.duration - (time.monotonic() - start)))
            if time.monotonic() - progress >= 10:
                progress = time.monotonic()
                self._progress(ctx, clients)
        dead = [c.name for c, t in tasks.items() if t.done()]
        if dead:
            self.log(f"{len(dead)} clients ended early: {dead[:5]}")

    def _settled(self) -> float:
        """When (seconds into the run) the load became steady: SETTLE after the last
        fault's servers were back."""
        faults = self.fleet.faults
        if not faults:
            return SETTLE
        last = faults[-1]
        return last.t + (last.back_after or 0.0) + SETTLE

    def _fault_kinds(self) -> list[str]:
        if self.config.backend == "sqlite":
            return ["node0"]
        if self.config.lossy:
            return ["redis", "node0", "node1"]
        return ["node0", "redis", "node1"]

    async def _inject(self, what: str) -> Fault:
        down = self.rng.uniform(*self.config.down)
        if what == "redis":
            return await self.fleet.kill_redis(down)
        return await self.fleet.kill_node(int(what.removeprefix("node")), down)

    def _progress(self, ctx: Context, clients: list[Client]) -> None:
        accepted = sum(s.accepted for c in clients for s in c.ledger.said.values())
        received = sum(len(st.ids) for c in clients for st in c.ledger.stints)
        self.log(
            f"accepted {accepted}, received {received}, "
            + ", ".join(f"{k} {v}" for k, v in sorted(ctx.stats.items()))
        )

    async def _sample(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                self.fleet.sample()
                await self.fleet.scrape(http)
                await asyncio.sleep(self.config.sample_every)

    async def _retry(self, call: Any) -> Any:
        """A read of the server after the run, retried briefly (a node may be restarting)."""
        for attempt in range(50):
            try:
                return await call()
            except (aiohttp.ClientError, OSError, TimeoutError):
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")


async def soak(config: Config) -> Report:
    """One soak run; the servers are stopped and the work directory kept or removed."""
    if config.workdir is not None:
        config.workdir.mkdir(parents=True, exist_ok=True)
        holder: Any = contextlib.nullcontext(str(config.workdir))
    else:
        holder = tempfile.TemporaryDirectory(prefix="chatroom-soak-")
    with holder as workdir:
        runner = Soak(config, Path(workdir))
        try:
            return await runner.run()
        finally:
            await runner.fleet.close()


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--lossy", action="store_true",
                        help="Redis without persistence: its restart loses every stream, "
                        "which every client must be told with a reset")
    parser.add_argument("--minutes", type=float, default=None,
                        help="long mode: minutes of saying (default: the short mode's 30 s)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="the short mode with this many seconds of saying")
    parser.add_argument("--clients", type=int, default=None,
                        help="clients (default 80 short, 320 with --minutes)")
    parser.add_argument("--rooms", type=int, default=None, help="rooms (default 3 short, 6 long)")
    parser.add_argument("--faults", type=int, default=None,
                        help="faults injected in the first half "
                        "(default 2 short, one per 2 minutes long)")
    parser.add_argument("--floods", type=int, default=None,
                        help="floods of the flood room (default 1 short, one a minute long)")
    parser.add_argument("--slow", type=int, default=None,
                        help="slow readers in the flood room (default 4 short, 8 long)")
    parser.add_argument("--firehoses", type=int, default=2,
                        help="clients that flood the flood room")
    parser.add_argument("--flood-messages", type=int, default=800,
                        help="messages each firehose says in a flood (of 1990 characters)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the database, the Redis files and the node logs here")
    parser.add_argument("--json", default=None, help="also write the summary as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.lossy and args.backend != "redis":
        parser.error("--lossy is a Redis without persistence: use it with --backend redis")
    long = args.minutes is not None
    duration = args.minutes * 60 if long else (args.seconds or 30.0)
    config = Config(
        backend=args.backend,
        lossy=args.lossy,
        clients=args.clients or (320 if long else 80),
        rooms=args.rooms or (6 if long else 3),
        duration=duration,
        faults=args.faults if args.faults is not None else (
            max(1, int(duration / 120)) if long else 2),
        floods=args.floods if args.floods is not None else (
            max(1, int(duration / 60)) if long else 1),
        slow=args.slow if args.slow is not None else (8 if long else 4),
        firehoses=args.firehoses,
        flood_messages=args.flood_messages,
        ramp=10.0 if long else 3.0,
        pace=(3.0, 9.0) if long else (2.0, 5.0),
        sample_every=5.0 if long else 1.0,
        seed=args.seed,
        workdir=args.workdir,
        verbose=not args.quiet,
    )
    return config, args.json


def main(argv: Sequence[str] | None = None) -> int:
    config, json_path = parse_args(argv)
    try:
        import uvloop

        runner: Any = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        report = runner.run(soak(config))
    print(report.text())
    if json_path:
        Path(json_path).write_text(json.dumps(report.summary(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
