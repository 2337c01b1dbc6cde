"""The soak's servers: `chatroom serve` processes (and a Redis of the soak's own), the
faults done to them, and their memory read from /proc.

SQLite: one node on one database file; its fault is SIGKILL, then a restart on the same
file and port. Redis: two nodes on one Redis that keeps an append-only file fsynced on
every write; the faults are SIGKILL of a node (restarted on its port) and SIGKILL of
Redis itself (restarted on its directory, so nothing it acknowledged is lost). The
lossy variant runs Redis without persistence: its restart loses every stream, which
the clients must be told (a reset).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.cluster.nodes import Cluster, Node, wait_ready
from tests.redis_server import RedisServer, free_port, start_redis

__all__ = ["Fault", "Fleet", "Sample", "serve_flags", "soak_flags"]

# Limits the soak raises so that hundreds of clients from one machine are not refused
# (flag -> value); each is passed only if this `chatroom serve` offers it.
RAISED_LIMITS: dict[str, str] = {
    # a say rate per session: the firehose clients say hundreds of messages at once
    "--rate-limit": "500",
    "--rate-burst": "1000",
    "--demo-rate-limit": "1000",
    "--demo-rate-burst": "1000",
    "--address-rate-limit": "2000",
    "--address-rate-burst": "4000",
    "--room-rate-limit": "100",
    "--room-rate-burst": "100",
    "--max-connections": "19000",
    "--max-connections-per-address": "1000",
    "--max-connections-per-session": "32",
    # every event of the run stays in history, where the ledger is checked
    "--retention": "100000000",
}


def serve_flags() -> set[str]:
    """The flags `chatroom serve --help` lists."""
    out = subprocess.run(
        [sys.executable, "-m", "chatroom", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out))


def soak_flags(offered: set[str]) -> list[str]:
    args: list[str] = []
    for flag, value in RAISED_LIMITS.items():
        if flag in offered:
            args += [flag, value]
    return args


@dataclass
class Sample:
    """A process's resident memory at one time of the run."""

    t: float
    label: str
    pid: int
    rss_kb: int


@dataclass
class Fault:
    # seconds into the run, and the monotonic clock's time, of the fault
    t: float
    at: float
    what: str
    # seconds from the fault until the servers answered /readyz again; None: never
    back_after: float | None = None
    # seconds from the fault until the restarted node answered /healthz (it listens and
    # serves; /readyz may take longer: its backend check waits behind the reconnects)
    alive_after: float | None = None
    # it lost every stream (a Redis without persistence restarted)
    lost_streams: bool = False
    # when (monotonic) the restarted server answered again: an answer that came before
    # may be of a message stored before the fault
    restarted_at: float | None = None

    @property
    def survived(self) -> bool:
        return self.back_after is not None


# A log record's first line starts with its date (the node's logging format).
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d ")


# How long a restarted server may take to listen, and to answer /readyz, before the
# fault counts as not survived (hundreds of clients reconnect to it at once).
READY_WITHIN = 60.0


def rss_kb(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else None


@dataclass
class Fleet:
    backend: str  # "sqlite" or "redis"
    workdir: Path
    args: list[str]
    # Redis without persistence: a restart loses every stream (clients must get resets)
    lossy: bool = False
    start_time: float = field(default_factory=time.monotonic)
    cluster: Cluster | None = None
    redis: RedisServer | None = None
    ports: list[int] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    # every node process started, for its log
    started: list[Node] = field(default_factory=list)
    # pid -> subscribers that node process cut off as too slow, as its /metrics said last
    cut_off: dict[int, int] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.start_time

    async def start(self) -> None:
        if self.backend == "sqlite":
            url = f"sqlite:///{self.workdir / 'soak.db'}"
            count = 1
        else:
            self.redis = await asyncio.to_thread(
                start_redis, own=True, persistent=not self.lossy
            )
            url = self.redis.url(0)
            count = 2
        self.cluster = Cluster(url, self.workdir)
        self.ports = [free_port() for _ in range(count)]
        self.nodes = [self._spawn(port) for port in self.ports]
        await asyncio.gather(*(wait_ready(node) for node in self.nodes))

    def _spawn(self, port: int) -> Node:
        assert self.cluster is not None
        node = self.cluster.spawn(port=port, args=self.args)
        self.started.append(node)
        return node

    async def kill_node(self, slot: int, down: float) -> Fault:
        """SIGKILL one node; `down` seconds later start it again on its port."""
        assert self.cluster is not None
        fault = Fault(self.now(), time.monotonic(), f"SIGKILL {self.backend} node {slot + 1}")
        self.faults.append(fault)
        await self.cluster.kill(self.nodes[slot])
        await asyncio.sleep(down)
        node = self.nodes[slot] = self._spawn(self.ports[slot])
        try:
            await wait_ready(node, READY_WITHIN, path="/healthz")
            fault.alive_after = self.now() - fault.t
            await wait_ready(node, READY_WITHIN)
        except AssertionError:
            return fault
        fault.back_after = self.now() - fault.t
        return fault

    async def kill_redis(self, down: float) -> Fault:
        """SIGKILL Redis; `down` seconds later start it again on its port and directory."""
        redis = self.redis
        assert redis is not None
        fault = Fault(
            self.now(),
            time.monotonic(),
            "SIGKILL redis-server ("
            + ("no persistence: every stream lost" if self.lossy
               else "appendonly, appendfsync always")
            + ")",
            lost_streams=self.lossy,
        )
        self.faults.append(fault)
        await asyncio.to_thread(redis.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(redis.restart)
        fault.restarted_at = time.monotonic()
        try:
            # every node must find its Redis again by itself
            await asyncio.gather(*(wait_ready(node, READY_WITHIN) for node in self.nodes))
        except AssertionError:
            return fault
        fault.back_after = self.now() - fault.t
        return fault

    def processes(self) -> list[tuple[str, int]]:
        procs = [(f"node{i + 1}", n.pid) for i, n in enumerate(self.nodes) if n.alive()]
        if self.redis is not None and self.redis.process is not None:
            procs.append(("redis", self.redis.process.pid))
        return procs

    def sample(self) -> None:
        t = self.now()
        for label, pid in self.processes():
            rss = rss_kb(pid)
            if rss is not None:
                self.samples.append(Sample(t, label, pid, rss))

    async def scrape(self, http: aiohttp.ClientSession) -> None:
        """Read each live node's count of subscribers cut off (a restart starts at 0)."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                async with http.get(
                    node.url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)
                ) as response:
                    text = await response.text()
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
            found = re.search(r"^chatroom_clients_cut_off_total ([0-9.e+]+)$", text, re.M)
            if found:
                self.cut_off[node.pid] = int(float(found.group(1)))

    def log_problems(self) -> list[str]:
        """The ERROR (and CRITICAL) records of the node logs, each with the last line of
        its traceback (the exception that ended it)."""
        found: list[str] = []
        for node in self.started:
            try:
                lines = node.log().splitlines()
            except OSError:
                continue
            record: str | None = None
            cause = ""
            for line in [*lines, "0000-00-00 end"]:
                if _RECORD.match(line):
                    if record is not None:
                        found.append(f"{node.name}: {record}{' -> ' + cause if cause else ''}")
                    record, cause = None, ""
                    if " ERROR " in line or " CRITICAL " in line:
                        record = line.strip()[:200]
                elif (
                    record is not None
                    and line
                    and not line[0].isspace()
                    and not line.startswith(("Traceback", "During handling", "The above"))
                ):
                    # the last unindented line of a traceback names the exception
                    cause = line.strip()[:200]
        return found

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.close()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.cleanup)
