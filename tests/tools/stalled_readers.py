"""Stalled readers: what clients that never read cost the server and the kernel.

    python -m tests.tools.stalled_readers --clients 1000 --technique websocket \\
        --send-buffer 65536 --seconds 60

Starts `chatroom serve` (SQLite in a temporary directory, 127.0.0.1, a free port, the
per-address, per-session and rate limits lifted), then opens on loopback:

- `--clients` stalled clients (raw sockets, WebSocket or SSE) that send their upgrade or
  request, read the response head and never read again; each sets a small SO_RCVBUF
  before it connects, so what the server sends piles up in the server's own socket
  buffer and then in the server's process. They come from 127.0.0.2 and up (at most
  `--per-address` each), so their sockets are told apart from the others. Stalled
  WebSockets send an unsolicited pong every `--pong-every` seconds (RFC 6455 allows
  it), so the server's heartbeat does not drop them and the cut-off on unsent bytes
  is what ends them;
- one good client on the same technique, which reads everything and records each
  message's latency from its due time (written in its text) and whether any went
  missing, doubled or came out of order;
- one publisher saying messages of `--size` characters at `--rate` a second for
  `--seconds`: through one WebSocket, each frame sent when due whatever the answers (the
  server stores one socket's messages in order and acks each), or with `--publish
  longpoll` through POSTs one after another (a late answer delays the next).

`--read` is the control: the same clients read and drop all they are sent, so the same
fan-out runs without anyone stalling.

Every `--sample-every` seconds it samples the server's RSS (/proc/PID/status), the
kernel's TCP memory (/proc/net/sockstat, for the whole machine: other processes' sockets
count there too, so the baseline is given), the server-side sockets of the stalled
clients (`ss -tanmO`: their state, Send-Q and skmem), the server's /metrics (clients
cut off, connections), and the good client's latency. After the publishing it keeps
sampling `--settle` seconds (longer than the WebSocket close timeout, 10 s), to show
what is still held once cut-off clients are gone. It prints a table over time, a
summary and the exact command; `--json FILE` writes the figures.

Exits 0 when the good client received every message once and in order and (with a
`--send-buffer`) no stalled socket queued more in the kernel than twice the send buffer
and one 64 KiB loopback segment; 1 otherwise; 2 when the run could not be made.
Bounded in count (`--clients` at most what the open-file limit allows) and in time
(connect, `--seconds`, a drain, `--settle`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from chatroom.web.security import COOKIE

__all__ = ["Summary", "main", "run"]

ROOM = "stalled"
MARK = "stall:"
# file descriptors kept for the server's and the tool's own use past the clients
_FD_MARGIN = 200
# how long the good client may lag behind the last message before it counts it lost
_DRAIN = 15.0
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CSRF = re.compile(r'data-csrf="([^"]+)"')
_SKMEM = re.compile(r"skmem:\(([^)]*)\)")
_FIELD = re.compile(r"([a-z]+)(\d+)")


# --- the server under test --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_argv(args: argparse.Namespace, port: int, db: Path) -> list[str]:
    lifted = "1000000"
    return [
        sys.executable, "-m", "chatroom", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend", f"sqlite:///{db}",
        "--secret", "stalled-readers-secret-" + "0" * 32,
        "--socket-send-buffer", str(args.send_buffer),
        "--max-unsent", str(args.max_unsent),
        "--max-connections", str(args.clients + 100),
        "--max-connections-per-address", "100000",
        "--max-connections-per-session", "100000",
        "--demo-rate-limit", lifted, "--demo-rate-burst", lifted,
        "--rate-limit", lifted, "--rate-burst", lifted,
        "--address-rate-limit", lifted, "--address-rate-burst", lifted,
        "--log-level", "WARNING",
    ]


async def wait_ready(
    http: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"chatroom serve exited with {proc.returncode} before it was ready")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with http.get(f"{base}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server at {base} did not become ready within 30 s")
        await asyncio.sleep(0.1)


@dataclass
class Login:
    http: aiohttp.ClientSession
    cookie: str
    csrf: str


async def login(base: str, user: str, demo: str) -> Login:
    """Claim `user` through /demo as a browser would: its cookie and its page's CSRF token."""
    # unsafe=True: keep the cookies of an IP-address host such as 127.0.0.1
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        async with http.get(
            f"{base}/demo", params={"user": user, "room": ROOM, "demo": demo}
        ) as response:
            page = await response.text()
            if response.status != 200:
                raise RuntimeError(f"/demo for {user}: HTTP {response.status}: {page[:200]}")
        csrf = _CSRF.search(page)
        morsel = http.cookie_jar.filter_cookies(URL(base)).get(COOKIE)
        if csrf is None or morsel is None:
            raise RuntimeError(f"/demo for {user}: no CSRF token or no session cookie")
    except BaseException:
        await http.close()
        raise
    return Login(http, f"{COOKIE}={morsel.value}", csrf.group(1))


# --- the stalled clients ----------------------------------------------------------------


def request_bytes(technique: str, port: int, cookie: str) -> bytes:
    host = f"Host: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
    if technique == "websocket":
        key = "c3RhbGxlZC1yZWFkZXJzIQ=="  # 16 bytes, base64: any will do
        return (
            f"GET /websocket/room/socket?room={ROOM} HTTP/1.1\r\n{host}"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    return (
        f"GET /sse/room/events?room={ROOM} HTTP/1.1\r\n{host}Accept: text/event-stream\r\n\r\n"
    ).encode()


def source_address(index: int, per_address: int) -> str:
    """127.0.0.2 and up: `per_address` clients each (ephemeral ports run out near 28,000)."""
    n = 2 + index // per_address
    return f"127.0.{n // 256}.{n % 256}" if n >= 256 else f"127.0.0.{n}"


async def open_stalled(
    technique: str, port: int, cookie: str, source: str, rcvbuf: int
) -> socket.socket:
    """Connect, send the request, read the response head; the socket is never read again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # before connect, so the window it offers is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
        async with asyncio.timeout(30):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, request_bytes(technique, port, cookie))
            head = b""
            while b"\r\n\r\n" not in head:
                # small reads: whatever follows the head stays unread in the kernel
                chunk = await loop.sock_recv(sock, 256)
                if not chunk:
                    raise ConnectionError(f"closed before the response head: {head[:200]!r}")
                head += chunk
        status = head.split(b" ", 2)[1]
        want = b"101" if technique == "websocket" else b"200"
        if status != want:
            raise ConnectionError(f"HTTP {status.decode()}: {head[:300]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


# an unmasked-payload, empty, masked pong frame (a client must mask; the key is arbitrary)
PONG = bytes((0x8A, 0x80)) + b"\x00\x00\x00\x00"


class Drain:
    """`--read`, the control: every client reads and drops what it is sent, at once."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.bytes = 0
        loop = asyncio.get_running_loop()
        for sock in socks:
            loop.add_reader(sock.fileno(), self._read, sock)

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(sock.fileno())
                return
            self.bytes += len(data)

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())


async def keep_pongs(socks: list[socket.socket], every: float, gone: set[int]) -> None:
    """Send each stalled WebSocket an unsolicited pong now and then; note which are gone."""
    while True:
        await asyncio.sleep(every)
        for i, sock in enumerate(socks):
            if i in gone:
                continue
            try:
                sock.send(PONG)
            except BlockingIOError:
                pass  # its send buffer is full (the server stopped reading it): try later
            except OSError:
                gone.add(i)


async def open_many(
    args: argparse.Namespace, port: int, cookie: str
) -> list[socket.socket]:
    """Open `--clients` clients, 64 at a time; all of them or an error."""
    socks: list[socket.socket] = []
    gate = asyncio.Semaphore(64)
    failures: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            if failures:
                return
            try:
                socks.append(
                    await open_stalled(
                        args.technique, port, cookie, source_address(i, args.per_address),
                        args.rcvbuf,
                    )
                )
            except (OSError, TimeoutError) as exc:
                failures.append(f"client {i}: {exc}")

    await asyncio.gather(*(one(i) for i in range(args.clients)))
    if failures:
        for sock in socks:
            sock.close()
        raise RuntimeError(f"{len(failures)} clients failed to open: {failures[:3]}")
    return socks


async def start_drain_child(
    args: argparse.Namespace, port: int, cookie: str
) -> asyncio.subprocess.Process:
    """`--read`: a child process opens the clients and reads all they are sent."""
    argv = [
        sys.executable, "-m", "tests.tools.stalled_readers", "--drain-child",
        "--clients", str(args.clients), "--technique", args.technique,
        "--rcvbuf", str(args.rcvbuf), "--per-address", str(args.per_address),
        "--pong-every", str(args.pong_every),
    ]
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write(orjson.dumps({"port": port, "cookie": cookie}) + b"\n")
    await child.stdin.drain()
    line = await asyncio.wait_for(child.stdout.readline(), 120)
    if not line.startswith(b"ready"):
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise RuntimeError(f"the reading clients did not start: {line[:300]!r}")
    return child


async def stop_drain_child(child: asyncio.subprocess.Process) -> None:
    if child.stdin is not None:
        child.stdin.close()
    try:
        await asyncio.wait_for(child.wait(), 20)
    except TimeoutError:
        child.kill()
        await child.wait()


async def drain_child(args: argparse.Namespace) -> int:
    """The child of `--read`: open the clients, read and drop everything until stdin ends."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    config = orjson.loads(await stdin.readline())
    try:
        socks = await open_many(args, int(config["port"]), str(config["cookie"]))
    except RuntimeError as exc:
        print(f"failed {exc}", flush=True)
        return 1
    drain = Drain(socks)
    gone: set[int] = set()
    pongs = (
        asyncio.create_task(keep_pongs(socks, args.pong_every, gone))
        if args.technique == "websocket" and args.pong_every > 0
        else None
    )
    print(f"ready {len(socks)}", flush=True)
    await stdin.read()  # until the parent closes it
    if pongs is not None:
        pongs.cancel()
    drain.stop()
    for sock in socks:
        sock.close()
    print(f"read {drain.bytes}", flush=True)
    return 0


# --- the good client and the publisher -----------------------------------------------------


@dataclass
class Good:
    """What the well-behaved client saw."""

    seqs: list[int] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)
    # in arrival order: latency in ms from each message's due time (the publisher's
    # schedule), and from the moment it was sent
    latencies: array[float] = field(default_factory=lambda: array("d"))
    since_sent: array[float] = field(default_factory=lambda: array("d"))
    arrivals: array[float] = field(default_factory=lambda: array("d"))
    duplicates: int = 0
    out_of_order: int = 0
    ended: str | None = None
    # when the publishing started (monotonic ns): arrivals count from it
    start_ns: int = 0

    def record(self, event: dict[str, Any]) -> None:
        text = event.get("text")
        if event.get("type") != "message" or not isinstance(text, str):
            return
        if not text.startswith(MARK):
            return
        now = time.monotonic_ns()
        _, seq_s, due_s, sent_s, _ = text.split(":", 4)
        seq, due, sent = int(seq_s), int(due_s), int(sent_s)
        if seq in self.ids:
            self.duplicates += 1
            return
        if self.seqs and seq < self.seqs[-1]:
            self.out_of_order += 1
        self.seqs.append(seq)
        self.ids[seq] = str(event.get("id"))
        self.latencies.append((now - due) / 1e6)
        self.since_sent.append((now - sent) / 1e6)
        self.arrivals.append((now - self.start_ns) / 1e9)


async def good_websocket(login: Login, base: str, good: Good) -> None:
    url = base.replace("http://", "ws://", 1) + f"/websocket/room/socket?room={ROOM}"
    async with login.http.ws_connect(url, autoping=True, max_msg_size=1 << 20) as ws:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            good.record(orjson.loads(msg.data))
        good.ended = f"websocket closed {ws.close_code}"


async def good_sse(login: Login, base: str, good: Good) -> None:
    async with login.http.get(
        f"{base}/sse/room/events", params={"room": ROOM}, timeout=aiohttp.ClientTimeout()
    ) as response:
        if response.status != 200:
            good.ended = f"HTTP {response.status}"
            return
        kind = None
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"event:"):
                kind = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                if kind not in (None, "message"):
                    good.ended = f"event: {kind} {line[5:].strip().decode()}"
                    return
                good.record(orjson.loads(line[5:]))
            elif not line:
                kind = None
        good.ended = "stream ended"


@dataclass
class Published:
    ids: dict[int, str] = field(default_factory=dict)
    # how long each say took to be answered (the POST's response, or the WebSocket's ack)
    say_ms: array[float] = field(default_factory=lambda: array("d"))
    errors: list[str] = field(default_factory=list)
    # messages sent (answered or not)
    sent: int = 0

    @property
    def count(self) -> int:
        return len(self.ids)


def _text(seq: int, due: int, now: int, size: int) -> str:
    head = f"{MARK}{seq}:{due}:{now}:"
    return head + "x" * max(0, size - len(head))


async def _due(seq: int, start_ns: int, interval: int) -> int:
    due = start_ns + seq * interval
    delay = (due - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
    return due


async def publish_longpoll(
    login: Login, base: str, args: argparse.Namespace, start_ns: int, out: Published
) -> None:
    """Say rate*seconds messages by POST, one after another, each due at start + seq/rate
    (a POST answered late delays the next: the schedule slips, and the latency from the
    due time shows it)."""
    interval = int(1e9 / args.rate)
    url = f"{base}/longpolling/room/messages"
    for seq in range(round(args.rate * args.seconds)):
        due = await _due(seq, start_ns, interval)
        t0 = time.monotonic_ns()
        out.sent += 1
        async with login.http.post(
            url, params={"room": ROOM},
            json={"message": _text(seq, due, t0, args.size), "csrf": login.csrf},
        ) as response:
            body = await response.read()
            if response.status != 200:
                out.errors.append(f"seq {seq}: HTTP {response.status}: {body[:200]!r}")
                if len(out.errors) > 20:
                    return
                continue
        out.say_ms.append((time.monotonic_ns() - t0) / 1e6)
        out.ids[seq] = str(orjson.loads(body)["id"])


async def publish_websocket(
    login: Login, base: str, args: argparse.Namespace, start_ns: int, out: Published
) -> None:
    """Say rate*seconds messages through one WebSocket, each sent when due whatever the
    answers (open loop); the server stores one socket's messages in order and acks each."""
    interval = int(1e9 / args.rate)
    total = round(args.rate * args.seconds)
    url = base.replace("http://", "ws://", 1) + f"/websocket/room/socket?room={ROOM}"
    sent_at: dict[int, int] = {}
    all_acked = asyncio.get_running_loop().create_future()

    async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = orjson.loads(msg.data)
            kind, cid = frame.get("type"), frame.get("client_id")
            if kind not in ("ack", "error") or not isinstance(cid, str):
                continue  # the room's events: the publisher reads them and lets them go
            seq = int(cid)
            if kind == "ack":
                out.ids[seq] = str(frame["id"])
                out.say_ms.append((time.monotonic_ns() - sent_at[seq]) / 1e6)
            else:
                out.errors.append(f"seq {seq}: {frame.get('error')}: {frame.get('reason')}")
            if len(out.ids) + len(out.errors) >= total and not all_acked.done():
                all_acked.set_result(None)
        if not all_acked.done():
            out.errors.append(f"the publisher's WebSocket closed: {ws.close_code}")
            all_acked.set_result(None)

    async with login.http.ws_connect(url, autoping=True, max_msg_size=1 << 20) as ws:
        reader = asyncio.create_task(read(ws))
        try:
            for seq in range(total):
                due = await _due(seq, start_ns, interval)
                now = time.monotonic_ns()
                sent_at[seq] = now
                out.sent += 1
                await ws.send_str(
                    orjson.dumps(
                        {"text": _text(seq, due, now, args.size), "client_id": str(seq)}
                    ).decode()
                )
                if all_acked.done():
                    break  # closed under us
            await all_acked
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


# --- sampling ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the publishing started
    sent: int
    rss: int  # bytes
    hwm: int
    tcp_mem: int  # bytes, /proc/net/sockstat (the whole machine)
    orphans: int
    states: dict[str, int]  # server-side stalled sockets by state
    send_q: int  # their Send-Q, summed
    queued: int  # their skmem w (wmem_queued: what the kernel holds to send), summed
    queued_max: int
    sndbuf_max: int  # their skmem tb, the largest
    client_rmem: int  # the stalled clients' own receive memory, summed
    cut_off: int
    connections: int
    cpu: float  # the server's CPU seconds so far (user + system)
    good: int
    good_upto: int  # index into Good.latencies at this sample
    probe_upto: int  # index into Probe.ms at this sample


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_status(pid: int) -> tuple[int, int]:
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def sockstat() -> tuple[int, int]:
    """(TCP memory in bytes, orphan sockets) from /proc/net/sockstat."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()
            values = dict(zip(parts[1::2], parts[2::2], strict=False))
            return int(values["mem"]) * _PAGE, int(values["orphan"])
    return 0, 0


@dataclass
class SocketSummary:
    states: dict[str, int] = field(default_factory=dict)
    send_q: int = 0
    queued: int = 0
    queued_max: int = 0
    sndbuf_max: int = 0
    client_rmem: int = 0


async def sockets(port: int, sources: set[str]) -> SocketSummary:
    """The stalled clients' sockets, both ends, from `ss -tanmO`."""
    proc = await asyncio.create_subprocess_exec(
        "ss", "-tanmOH", f"( sport = :{port} or dport = :{port} )",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    summary = SocketSummary()
    for line in out.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        state, send_q, local, peer = parts[0], parts[2], parts[3], parts[4]
        local_host, _, local_port = local.rpartition(":")
        peer_host, _, _ = peer.rpartition(":")
        found = _SKMEM.search(line)
        mem = {k: int(v) for k, v in _FIELD.findall(found.group(1))} if found else {}
        if local_port == str(port) and peer_host in sources:
            summary.states[state] = summary.states.get(state, 0) + 1
            summary.send_q += int(send_q)
            w = mem.get("w", 0)
            summary.queued += w
            summary.queued_max = max(summary.queued_max, w)
            summary.sndbuf_max = max(summary.sndbuf_max, mem.get("tb", 0))
        elif local_host in sources:
            summary.client_rmem += mem.get("r", 0)
    return summary


async def metrics(http: aiohttp.ClientSession, base: str) -> tuple[int, int] | None:
    """(clients cut off, open streaming connections) from the server's /metrics."""
    cut = conns = 0
    try:
        async with http.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    for line in text.splitlines():
        if line.startswith("chatroom_clients_cut_off_total"):
            cut = int(float(line.split()[-1]))
        elif line.startswith("chatroom_connections{"):
            conns += int(float(line.split()[-1]))
    return cut, conns


@dataclass
class Probe:
    """GET /healthz every `every` seconds: how long the server takes to answer anything."""

    ms: array[float] = field(default_factory=lambda: array("d"))

    async def run(self, http: aiohttp.ClientSession, base: str, every: float) -> None:
        while True:
            t0 = time.monotonic_ns()
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.get(
                    f"{base}/healthz", timeout=aiohttp.ClientTimeout(total=30)
                ) as r:
                    await r.read()
            self.ms.append((time.monotonic_ns() - t0) / 1e6)
            await asyncio.sleep(every)


async def take_sample(
    pid: int, port: int, sources: set[str], http: aiohttp.ClientSession, base: str,
    start_ns: int, published: Published, good: Good, probe: Probe, last: Sample | None,
) -> Sample:
    rss, hwm = proc_status(pid)
    cpu = cpu_seconds(pid)
    tcp_mem, orphans = sockstat()
    socks = await sockets(port, sources)
    scraped = await metrics(http, base)
    if scraped is None:
        # no answer within 10 s: the last figures stand
        scraped = (0, 0) if last is None else (last.cut_off, last.connections)
    cut, conns = scraped
    return Sample(
        t=(time.monotonic_ns() - start_ns) / 1e9, sent=published.count, rss=rss, hwm=hwm,
        tcp_mem=tcp_mem, orphans=orphans, states=socks.states, send_q=socks.send_q,
        queued=socks.queued, queued_max=socks.queued_max, sndbuf_max=socks.sndbuf_max,
        client_rmem=socks.client_rmem, cut_off=cut, connections=conns, cpu=cpu,
        good=len(good.seqs), good_upto=len(good.latencies), probe_upto=len(probe.ms),
    )


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Summary:
    command: str
    technique: str
    clients: int
    send_buffer: int
    max_unsent: int
    rate: float
    size: int
    seconds: float
    opened: int
    read: bool = False
    publish: str = "websocket"
    baseline: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    sent: int = 0
    publish_errors: list[str] = field(default_factory=list)
    say_p50_ms: float = 0.0
    say_p99_ms: float = 0.0
    say_max_ms: float = 0.0
    good_received: int = 0
    good_lost: int = 0
    good_duplicates: int = 0
    good_out_of_order: int = 0
    good_wrong_ids: int = 0
    good_ended: str | None = None
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    sent_p50_ms: float = 0.0
    sent_p99_ms: float = 0.0
    sent_max_ms: float = 0.0
    pongs_failed: int = 0
    server_exit: int | None = None
    # what the good client saw, message by message, and the health probe's answers
    # (not in the JSON: their summaries are)
    good: Good = field(default_factory=Good)
    probe: Probe = field(default_factory=Probe)

    @property
    def good_ok(self) -> bool:
        return (
            self.sent > 0
            and not self.publish_errors
            and self.good_received == self.sent
            and self.good_lost == 0
            and self.good_duplicates == 0
            and self.good_out_of_order == 0
            and self.good_wrong_ids == 0
        )

    @property
    def kernel_bound(self) -> int | None:
        """The most one stalled socket may hold in the kernel's send queue: the send buffer
        as Linux doubles it, and one loopback segment (64 KiB) it may overshoot by."""
        return 2 * self.send_buffer + 65536 if self.send_buffer > 0 else None

    @property
    def kernel_bounded(self) -> bool:
        bound = self.kernel_bound
        return bound is None or self.peak("queued_max") <= bound

    def peak(self, name: str) -> int:
        return max((int(getattr(s, name)) for s in self.samples), default=0)

    def as_json(self) -> dict[str, Any]:
        end = self.samples[-1] if self.samples else None
        base = self.baseline
        return {
            "command": self.command, "technique": self.technique, "clients": self.clients,
            "read": self.read, "publish": self.publish,
            "opened": self.opened, "send_buffer": self.send_buffer,
            "max_unsent": self.max_unsent, "rate": self.rate, "size": self.size,
            "seconds": self.seconds, "sent": self.sent, "publish_errors": self.publish_errors,
            "good": {
                "ok": self.good_ok, "received": self.good_received, "lost": self.good_lost,
                "duplicates": self.good_duplicates, "out_of_order": self.good_out_of_order,
                "wrong_ids": self.good_wrong_ids, "ended": self.good_ended,
                "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
                "since_sent_p50_ms": self.sent_p50_ms, "since_sent_p99_ms": self.sent_p99_ms,
                "since_sent_max_ms": self.sent_max_ms,
            },
            "say_p50_ms": self.say_p50_ms, "say_p99_ms": self.say_p99_ms,
            "say_max_ms": self.say_max_ms,
            "healthz_p50_ms": percentile(list(self.probe.ms), 0.5),
            "healthz_p99_ms": percentile(list(self.probe.ms), 0.99),
            "healthz_max_ms": max(self.probe.ms, default=0.0),
            "server_cpu_s": (
                self.samples[-1].cpu - self.baseline.cpu
                if self.samples and self.baseline is not None else 0.0
            ),
            "baseline": None if base is None else _sample_json(base),
            "peak": {
                "rss": self.peak("rss"), "hwm": self.peak("hwm"),
                "tcp_mem": self.peak("tcp_mem"), "send_q": self.peak("send_q"),
                "queued": self.peak("queued"), "queued_max": self.peak("queued_max"),
                "sndbuf_max": self.peak("sndbuf_max"), "orphans": self.peak("orphans"),
            },
            "end": None if end is None else _sample_json(end),
            "cut_off": 0 if end is None else end.cut_off,
            "kernel_bound": self.kernel_bound, "kernel_bounded": self.kernel_bounded,
            "pongs_failed": self.pongs_failed,
            "server_exit": self.server_exit,
            "samples": [_sample_json(s) for s in self.samples],
        }


def _sample_json(s: Sample) -> dict[str, Any]:
    return {
        "t": round(s.t, 2), "sent": s.sent, "rss": s.rss, "hwm": s.hwm, "tcp_mem": s.tcp_mem,
        "orphans": s.orphans, "states": s.states, "send_q": s.send_q, "queued": s.queued,
        "queued_max": s.queued_max, "sndbuf_max": s.sndbuf_max, "client_rmem": s.client_rmem,
        "cut_off": s.cut_off, "connections": s.connections, "good": s.good,
        "cpu": round(s.cpu, 2),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace, command: str) -> Summary:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    summary = Summary(
        command=command, technique=args.technique, clients=args.clients,
        send_buffer=args.send_buffer, max_unsent=args.max_unsent, rate=args.rate,
        size=args.size, seconds=args.seconds, opened=0, read=args.read, publish=args.publish,
    )
    with tempfile.TemporaryDirectory(prefix="chatroom-stalled-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *server_argv(args, port, Path(tmp) / "chat.db"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            await _measure(args, proc, port, base, summary)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await asyncio.wait_for(proc.wait(), 10)
            summary.server_exit = proc.returncode
            problems = [
                line for line in log_path.read_text(errors="replace").splitlines()
                if "Traceback" in line or " ERROR " in line or "Error" in line
            ]
            if problems:
                print("server log (errors):", *problems[:20], sep="\n  ", file=sys.stderr)
    return summary


async def _measure(
    args: argparse.Namespace, proc: asyncio.subprocess.Process, port: int, base: str,
    summary: Summary,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        await wait_ready(http, base, proc)
        publisher = await login(
            base, "publisher", "websocket" if args.publish == "websocket" else "longpolling"
        )
        stack.push_async_callback(publisher.http.close)
        reader = await login(base, "good", args.technique)
        stack.push_async_callback(reader.http.close)
        stalled = await login(base, "stalled", args.technique)
        await stalled.http.close()

        good = summary.good
        good_task = asyncio.create_task(
            (good_websocket if args.technique == "websocket" else good_sse)(reader, base, good)
        )

        # the stalled clients, from 127.0.0.2 and up, a few at a time
        socks: list[socket.socket] = []

        def close_all() -> None:
            for sock in socks:
                sock.close()

        stack.callback(close_all)
        sources = {source_address(i, args.per_address) for i in range(max(1, args.clients))}
        t0 = time.monotonic()
        child: asyncio.subprocess.Process | None = None
        if args.read:
            # the reading clients live in a process of their own: reading 1000 sockets
            # would otherwise slow the loop that measures the good client
            child = await start_drain_child(args, port, stalled.cookie)
            stack.push_async_callback(stop_drain_child, child)
            summary.opened = args.clients
        else:
            socks += await open_many(args, port, stalled.cookie)
            summary.opened = len(socks)
        print(
            f"opened {summary.opened} {args.technique} clients in "
            f"{time.monotonic() - t0:.1f} s", file=sys.stderr,
        )
        if good_task.done():
            good_task.result()
            raise RuntimeError(f"the good client ended before the publishing: {good.ended}")

        published = Published()
        await asyncio.sleep(1.0)
        probe = summary.probe
        summary.baseline = await take_sample(
            proc.pid, port, sources, http, base, time.monotonic_ns(), published, good, probe,
            None,
        )
        probe_http = await stack.enter_async_context(aiohttp.ClientSession())
        probe_task = asyncio.create_task(probe.run(probe_http, base, args.probe_every))
        gone: set[int] = set()
        pongs = (
            asyncio.create_task(keep_pongs(socks, args.pong_every, gone))
            if args.technique == "websocket" and args.pong_every > 0 and socks
            else None
        )

        start_ns = good.start_ns = time.monotonic_ns() + 50_000_000
        publish = publish_websocket if args.publish == "websocket" else publish_longpoll
        publish_task = asyncio.create_task(publish(publisher, base, args, start_ns, published))

        async def sample_until(done: asyncio.Future[Any] | None, until: float) -> None:
            while True:
                s = await take_sample(
                    proc.pid, port, sources, http, base, start_ns, published, good, probe,
                    summary.samples[-1] if summary.samples else summary.baseline,
                )
                summary.samples.append(s)
                if done is not None and done.done():
                    return
                if time.monotonic() >= until:
                    return
                await asyncio.sleep(args.sample_every)

        deadline = time.monotonic() + args.seconds + 60
        await sample_until(publish_task, deadline)
        if not publish_task.done():
            publish_task.cancel()
            summary.publish_errors.append("the publisher had not finished within 60 s of its end")
        with contextlib.suppress(asyncio.CancelledError):
            await publish_task
        summary.sent = published.count
        summary.publish_errors += published.errors
        # the good client catches up with the last message (or not, within _DRAIN)
        drain_until = time.monotonic() + _DRAIN
        while len(good.seqs) < published.count and not good_task.done():
            if time.monotonic() > drain_until:
                break
            await asyncio.sleep(0.05)
        settle_until = time.monotonic() + args.settle
        await sample_until(None, settle_until)

        for task in (pongs, probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        summary.pongs_failed = len(gone)
        good_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await good_task

        summary.good_received = len(good.seqs)
        summary.good_lost = len(set(published.ids) - set(good.ids))
        summary.good_duplicates = good.duplicates
        summary.good_out_of_order = good.out_of_order
        summary.good_wrong_ids = sum(
            1 for seq, ident in good.ids.items() if published.ids.get(seq, ident) != ident
        )
        summary.good_ended = good.ended
        lat = list(good.latencies)
        summary.p50_ms, summary.p99_ms = percentile(lat, 0.5), percentile(lat, 0.99)
        summary.max_ms = max(lat, default=0.0)
        since = list(good.since_sent)
        summary.sent_p50_ms, summary.sent_p99_ms = percentile(since, 0.5), percentile(since, 0.99)
        summary.sent_max_ms = max(since, default=0.0)
        posts = list(published.say_ms)
        summary.say_p50_ms, summary.say_p99_ms = percentile(posts, 0.5), percentile(posts, 0.99)
        summary.say_max_ms = max(posts, default=0.0)


# --- output -----------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def table(summary: Summary, every: float) -> str:
    rows = [
        "| t s | sent | server CPU % | server RSS MiB | sockstat TCP mem MiB "
        "| stalled sockets (server side) | their Send-Q MiB "
        "| kernel queued MiB (max/socket KiB) | cut off | good p50/p99/max ms from due "
        "| good max ms from its send | /healthz max ms |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = summary.baseline
    if base is None:
        return "\n".join(rows)
    rows.append(_row("before", base, base, [], [], []))
    last = base
    for i, s in enumerate(summary.samples):
        if s.t - last.t < every and i != len(summary.samples) - 1:
            continue
        window = list(summary.good.latencies[last.good_upto : s.good_upto])
        since = list(summary.good.since_sent[last.good_upto : s.good_upto])
        probes = list(summary.probe.ms[last.probe_upto : s.probe_upto])
        rows.append(_row(f"{max(0.0, s.t):.0f}", s, last, window, since, probes))
        last = s
    return "\n".join(rows)


def _row(
    t: str, s: Sample, last: Sample, window: list[float], since: list[float],
    probes: list[float],
) -> str:
    states = " ".join(f"{k} {v}" for k, v in sorted(s.states.items())) or "none"
    lat = "" if not window else (
        f"{percentile(window, 0.5):.0f} / {percentile(window, 0.99):.0f} / {max(window):.0f}"
    )
    cpu = f"{100 * (s.cpu - last.cpu) / (s.t - last.t):.0f}" if s.t > last.t else ""
    probe = f"{max(probes):.0f}" if probes else ""
    from_post = f"{max(since):.0f}" if since else ""
    return (
        f"| {t} | {s.sent} | {cpu} | {_mib(s.rss)} | {_mib(s.tcp_mem)} | {states} "
        f"| {_mib(s.send_q)} | {_mib(s.queued)} ({s.queued_max / 1024:.0f}) | {s.cut_off} "
        f"| {lat} | {from_post} | {probe} |"
    )


def report(summary: Summary, every: float) -> str:
    data = summary.as_json()
    base, peak, end = data["baseline"] or {}, data["peak"], data["end"] or {}
    n = max(1, summary.opened)
    lines = [
        f"stalled readers: {summary.opened} {summary.technique} clients that "
        f"{'read everything (the control)' if summary.read else 'never read'}, "
        f"send buffer {summary.send_buffer or 'system default'}, max unsent "
        f"{summary.max_unsent}, {summary.rate:g} msg/s of {summary.size} characters "
        f"for {summary.seconds:g} s",
        "",
        table(summary, every),
        "",
        "| figure | before publishing | peak | end |",
        "|---|---:|---:|---:|",
        f"| server RSS MiB | {_mib(base.get('rss', 0))} | {_mib(peak['rss'])} "
        f"(VmHWM {_mib(peak['hwm'])}) | {_mib(end.get('rss', 0))} |",
        f"| server RSS past the baseline, KiB per stalled client | | "
        f"{(peak['rss'] - base.get('rss', 0)) / n / 1024:.0f} "
        f"| {(end.get('rss', 0) - base.get('rss', 0)) / n / 1024:.0f} |",
        f"| sockstat TCP mem MiB (whole machine) | {_mib(base.get('tcp_mem', 0))} "
        f"| {_mib(peak['tcp_mem'])} | {_mib(end.get('tcp_mem', 0))} |",
        f"| stalled sockets' kernel send queue MiB (skmem w) | {_mib(base.get('queued', 0))} "
        f"| {_mib(peak['queued'])} | {_mib(end.get('queued', 0))} |",
        f"| the same, largest one socket KiB | {base.get('queued_max', 0) / 1024:.0f} "
        f"| {peak['queued_max'] / 1024:.0f} | {end.get('queued_max', 0) / 1024:.0f} |",
        f"| bound on one socket's queue KiB (2 x send buffer + 64) | | "
        f"{'none' if summary.kernel_bound is None else summary.kernel_bound // 1024} "
        f"({'kept' if summary.kernel_bounded else 'PASSED'}) | |",
        f"| largest socket send buffer KiB (skmem tb) | {base.get('sndbuf_max', 0) / 1024:.0f} "
        f"| {peak['sndbuf_max'] / 1024:.0f} | {end.get('sndbuf_max', 0) / 1024:.0f} |",
        f"| stalled sockets still held by the server | "
        f"{sum(base.get('states', {}).values())} | | {sum(end.get('states', {}).values())} "
        f"({' '.join(f'{k} {v}' for k, v in sorted(end.get('states', {}).items()))}) |",
        f"| TCP orphans (whole machine) | {base.get('orphans', 0)} | {peak['orphans']} "
        f"| {end.get('orphans', 0)} |",
        f"| clients cut off (/metrics) | {base.get('cut_off', 0)} | | {data['cut_off']} |",
        "",
        f"good client: {summary.good_received}/{summary.sent} messages, lost "
        f"{summary.good_lost}, duplicated {summary.good_duplicates}, out of order "
        f"{summary.good_out_of_order}, ids not the publisher's {summary.good_wrong_ids}; "
        f"latency p50 {summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms, max "
        f"{summary.max_ms:.1f} ms from each message's due time; p50 {summary.sent_p50_ms:.1f} "
        f"ms, p99 {summary.sent_p99_ms:.1f} ms, max {summary.sent_max_ms:.1f} ms from its send"
        + (f"; its stream ended: {summary.good_ended}" if summary.good_ended else ""),
        f"server: /healthz p50 {data['healthz_p50_ms']:.1f} ms, p99 "
        f"{data['healthz_p99_ms']:.1f} ms, max {data['healthz_max_ms']:.1f} ms; CPU "
        f"{data['server_cpu_s']:.1f} s from the first message to the end",
        f"publisher ({summary.publish}): answered in p50 {summary.say_p50_ms:.1f} ms, p99 "
        f"{summary.say_p99_ms:.1f} ms, "
        f"max {summary.say_max_ms:.1f} ms"
        + (f"; errors: {summary.publish_errors[:3]}" if summary.publish_errors else ""),
    ]
    if summary.technique == "websocket" and not summary.read:
        lines.append(
            f"stalled WebSockets whose pong could not be sent (reset): {summary.pongs_failed}"
        )
    lines += ["", f"command: {summary.command}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    if shutil.which("ss") is None:
        raise SystemExit("stalled_readers needs ss (Debian's iproute2) to read socket memory")
    p = argparse.ArgumentParser(
        prog="python -m tests.tools.stalled_readers",
        description="Measure what clients that never read cost the server and the kernel.",
    )
    p.add_argument("--clients", type=int, default=1000, help="stalled clients (default 1000)")
    p.add_argument("--technique", choices=("websocket", "sse"), default="websocket")
    p.add_argument(
        "--send-buffer", type=int, default=65536,
        help="the server's --socket-send-buffer (0: the system's; default 65536)",
    )
    p.add_argument(
        "--max-unsent", type=int, default=1 << 20, help="the server's --max-unsent (1 MiB)"
    )
    p.add_argument("--seconds", type=float, default=60.0, help="how long to publish (60)")
    p.add_argument("--rate", type=float, default=50.0, help="messages a second (50)")
    p.add_argument(
        "--publish", choices=("websocket", "longpoll"), default="websocket",
        help="how the publisher says: one WebSocket, open loop (default), or long-poll POSTs "
        "one after another",
    )
    p.add_argument("--size", type=int, default=1000, help="characters a message (1000)")
    p.add_argument(
        "--rcvbuf", type=int, default=4096, help="SO_RCVBUF of each stalled client (4096)"
    )
    p.add_argument(
        "--per-address", type=int, default=20000,
        help="stalled clients per source address, 127.0.0.2 and up (20000)",
    )
    p.add_argument(
        "--pong-every", type=float, default=5.0,
        help="seconds between a stalled WebSocket's unsolicited pongs (0: none; 5)",
    )
    p.add_argument(
        "--read", action="store_true",
        help="the control: the clients read (and drop) all they are sent instead of stalling",
    )
    p.add_argument("--drain-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sample-every", type=float, default=1.0, help="seconds between samples")
    p.add_argument(
        "--probe-every", type=float, default=0.1, help="seconds between GET /healthz probes"
    )
    p.add_argument("--settle", type=float, default=12.0, help="seconds sampled after publishing")
    p.add_argument("--table-every", type=float, default=5.0, help="seconds between table rows")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # the clients' sockets are ours; the server inherits the limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if not 0 <= args.clients <= soft - _FD_MARGIN:
        p.error(
            f"--clients must be 0 to {soft - _FD_MARGIN}: this process and the server may "
            f"each hold {soft} open files"
        )
    if not 0 < args.rate <= 1000 or not 0 < args.seconds <= 3600:
        p.error("--rate must be in (0, 1000] and --seconds in (0, 3600]")
    if not 20 <= args.size <= 2000:
        p.error("--size must be 20 to 2000 characters")
    if args.per_address < 1:
        p.error("--per-address must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drain_child:
        try:
            import uvloop  # the cheapest loop for reading many sockets
        except ImportError:
            return asyncio.run(drain_child(args))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(drain_child(args))
    shown = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "tests.tools.stalled_readers", *shown])
    try:
        summary = asyncio.run(run(args, command))
    except RuntimeError as exc:
        print(f"stalled_readers: {exc}", file=sys.stderr)
        return 2
    print(report(summary, args.table_every))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(summary.as_json(), option=orjson.OPT_INDENT_2))
    return 0 if summary.good_ok and summary.kernel_bounded else 1


if __name__ == "__main__":
    sys.exit(main())
