"""docs/deploy.md's nginx front, as written there, in front of two nodes on a real Redis.

The test reads the nginx block that docs/deploy.md marks (the ```nginx fence right
after the `tests/deploy/test_nginx.py runs the nginx block below` comment), changes
only its listen address and its upstream ports, wraps it in a main configuration of
temporary paths, and runs Debian's nginx on it as a plain process on a free loopback
port. Then clients chat through it on every technique as browsers do, with the Origin
a browser sends for a page served by that nginx.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.cluster.nodes import (
    Cluster,
    Feed,
    LPFeed,
    Node,
    SSEFeed,
    WSFeed,
    login,
    refresh_page,
    say_form,
    say_lp,
    wait_exit,
)
from tests.redis_server import free_port, start_redis

DEPLOY_MD = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
MARKER = "<!-- tests/deploy/test_nginx.py runs the nginx block below -->"
NGINX = os.environ.get("CHATROOM_NGINX", "/usr/sbin/nginx")
ROOM = "frontdoor"
START_WITHIN = 10.0
STOP_WITHIN = 8.0
# the node holds a long poll this long (Settings.longpoll_timeout) before answering []
LONGPOLL_HOLD = 25.0


# --- the block from the doc ------------------------------------------------------------


def doc_block(markdown: str) -> str:
    """The ```nginx fence that follows the marker comment, as written."""
    assert markdown.count(MARKER) == 1, f"docs/deploy.md must hold {MARKER!r} exactly once"
    after = markdown.split(MARKER, 1)[1]
    fence = re.match(r"\s*```nginx\n(.*?)\n```", after, re.DOTALL)
    assert fence, "the marker in docs/deploy.md must be followed by a ```nginx block"
    return fence.group(1)


def for_test(block: str, listen_port: int, node_ports: list[int]) -> str:
    """The block with only its listen address and its upstream ports changed."""
    listens = re.findall(r"^\s*listen\s+[^;]*;", block, re.MULTILINE)
    assert len(listens) == 1, f"expected one listen directive, found {listens}"
    block = re.sub(
        r"^(\s*listen\s+)[^;]*;", rf"\g<1>127.0.0.1:{listen_port};", block, flags=re.MULTILINE
    )
    upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", block, re.DOTALL)
    assert upstream, "no upstream block"
    servers = re.findall(r"^\s*server\s+127\.0\.0\.1:\d+;", upstream.group(1), re.MULTILINE)
    assert len(servers) == len(node_ports), (
        f"the upstream must list {len(node_ports)} servers on 127.0.0.1, found {servers}"
    )
    ports = iter(node_ports)
    body = re.sub(
        r"^(\s*server\s+127\.0\.0\.1:)\d+;",
        lambda m: f"{m.group(1)}{next(ports)};",
        upstream.group(1),
        flags=re.MULTILINE,
    )
    return block[: upstream.start(1)] + body + block[upstream.end(1) :]


def main_conf(prefix: Path, block: str) -> str:
    """A whole nginx.conf around the block: every path nginx writes is under `prefix`."""
    # as root, nginx's workers would run as nobody, who cannot enter pytest's tmp dirs
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        # which node answered each request, and how long it took: for a failure's story
        "    log_format front '$remote_addr [$time_local] \"$request\" $status $bytes_sent '\n"
        "                     'upstream=$upstream_addr $upstream_status time=$request_time';\n"
        f"    access_log {prefix / 'access.log'} front;\n"
        f"{temp}\n"
        f"{block}\n"
        "}\n"
    )


def test_the_doc_block_is_found_and_only_its_ports_change() -> None:
    block = doc_block(DEPLOY_MD.read_text())
    changed = for_test(block, 18088, [19001, 19002])
    assert changed != block
    kept = [line for line in block.splitlines() if not re.match(r"\s*(listen|server) ", line)]
    assert kept == [
        line for line in changed.splitlines() if not re.match(r"\s*(listen|server) ", line)
    ]
    assert "listen 127.0.0.1:18088;" in changed
    assert "server 127.0.0.1:19001;" in changed
    assert "server 127.0.0.1:19002;" in changed


# --- nginx and the nodes ---------------------------------------------------------------


@functools.cache
def serve_flags() -> frozenset[str]:
    """The flags `chatroom serve --help` lists."""
    help_text = subprocess.run(
        [sys.executable, "-m", "chatroom", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return frozenset(re.findall(r"--[a-z][a-z-]+", help_text))


def behind_nginx_flags() -> list[str]:
    """What docs/deploy.md gives nodes behind nginx, for the flags this server has."""
    flags = serve_flags()
    args: list[str] = []
    if "--trusted-proxy" in flags:
        args += ["--trusted-proxy", "127.0.0.1"]
    if "--allowed-host" in flags:
        # the public name: here, the address the browser reaches nginx on
        args += ["--allowed-host", "127.0.0.1"]
    return args


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Front:
    """nginx running the doc's block; `node` is how the cluster helpers reach it."""

    node: Node
    prefix: Path

    @property
    def origin(self) -> str:
        return self.node.url

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def launch_front(prefix: Path, block: str, node_ports: list[int]) -> Front:
    """nginx on a free loopback port, in the foreground, in front of `node_ports`."""
    if not os.access(NGINX, os.X_OK):
        raise RuntimeError(
            f"{NGINX} not found: run scripts/test (it installs nginx) or apt-get install nginx"
        )
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, for_test(block, port, node_ports)))
    base = [NGINX, "-p", str(prefix), "-c", str(conf)]
    checked = subprocess.run(
        [*base, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, f"nginx -t refused:\n{checked.stderr}\n{conf.read_text()}"
    log_path = prefix / "nginx.out"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*base, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: teardown ends the workers too
        )
    return Front(Node("nginx", port, proc, log_path), prefix)


async def start_front(prefix: Path, block: str, node_ports: list[int]) -> Front:
    """launch_front(), once nginx accepts connections."""
    front = launch_front(prefix, block, node_ports)
    proc, port = front.node.proc, front.node.port
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_WITHIN
    while not await asyncio.to_thread(listening, port):
        if proc.poll() is not None or loop.time() > deadline:
            await stop_front(front)
            raise AssertionError(
                f"nginx did not listen on {port}:\n{front.node.log()}\n{front.error_log()}"
            )
        await asyncio.sleep(0.05)
    return front


async def stop_front(front: Front) -> None:
    proc = front.node.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # nginx's fast shutdown
        with contextlib.suppress(TimeoutError):
            await wait_exit(proc, STOP_WITHIN)
    # whatever is left of its group (a worker that outlived the master)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(5)


@dataclass
class Deployment:
    front: Front
    nodes: list[Node]


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    """Two nodes on Redis behind nginx running docs/deploy.md's block; all stopped after.

    The Redis is one of this test's own: the shared one's test database is emptied by
    every other Redis test, and a stream emptied under a node that stays connected is
    not one it notices (it waits past its old read id), so a suite running alongside
    would lose this test's messages during its 25 s of quiet.
    """
    block = doc_block(DEPLOY_MD.read_text())
    redis = start_redis(own=True)
    cluster = Cluster(redis.url(0), tmp_path)
    front: Front | None = None
    try:
        nodes = await cluster.start(2, args=behind_nginx_flags())
        front = await start_front(tmp_path / "nginx", block, [n.port for n in nodes])
        yield Deployment(front, nodes)
    finally:
        try:
            if front is not None:
                await stop_front(front)
        finally:
            try:
                await cluster.close()
            finally:
                redis.cleanup()


def browser(origin: str) -> aiohttp.ClientSession:
    """A client that sends the Origin of the page it was served, as a browser does.

    A browser sends it on every POST and WebSocket handshake (the requests the nodes
    check); this one sends it on its GETs too, which asks no less of the front.
    """
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": origin}
    )


def direct() -> aiohttp.ClientSession:
    """A client that reaches one node directly, without an Origin (not a page's script)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@contextlib.asynccontextmanager
async def closing(*things: aiohttp.ClientSession | Feed) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                await thing.close()


def nginx_refused(front: Front) -> list[str]:
    """Lines of nginx's access log answered 403 (by a node, through nginx)."""
    path = front.prefix / "access.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [line for line in lines if re.search(r'" 403 ', line)]


@pytest.mark.slow
@pytest.mark.redis
async def test_chat_through_nginx_on_every_technique(deployment: Deployment) -> None:
    front, (node1, node2) = deployment.front, deployment.nodes
    origin = front.origin
    ws_user, sse_user, lp_user, refresh_user = (browser(origin) for _ in range(4))
    watcher1, watcher2 = direct(), direct()
    async with closing(ws_user, sse_user, lp_user, refresh_user, watcher1, watcher2):
        # each claims a nickname through nginx, from the welcome page's /demo link
        ws_login = await login(ws_user, front.node, "wendy", ROOM, demo="websocket")
        sse_login = await login(sse_user, front.node, "sasha", ROOM, demo="sse")
        lp_login = await login(lp_user, front.node, "lena", ROOM, demo="longpolling")
        refresh_login = await login(refresh_user, front.node, "rafa", ROOM, demo="refresh")
        # and one watcher on each node, straight, to see where each message went
        w1 = await login(watcher1, node1, "watch1", ROOM)
        w2 = await login(watcher2, node2, "watch2", ROOM)

        ws = await WSFeed.open(ws_user, front.node, ROOM, last=ws_login.last_id, label="ws")
        sse = await SSEFeed.open(
            sse_user, front.node, ROOM, last=sse_login.last_id, label="sse"
        )
        lp = LPFeed.open(lp_user, [front.node], ROOM, last=lp_login.last_id, label="lp")
        on1 = await WSFeed.open(watcher1, node1, ROOM, last=w1.last_id, label="watch")
        on2 = await SSEFeed.open(watcher2, node2, ROOM, last=w2.last_id, label="watch")
        feeds: list[Feed] = [ws, sse, lp, on1, on2]
        async with closing(*feeds):
            said: list[str] = []

            ack = await ws.say("over a websocket", "ws-1")
            assert ack.get("type") == "ack", ack
            said.append("over a websocket")

            stored = await say_lp(lp_user, front.node, ROOM, lp_login.csrf, "over a long poll")
            assert stored["text"] == "over a long poll", stored
            said.append("over a long poll")

            # the SSE page speaks through the long-poll POST
            await say_lp(sse_user, front.node, ROOM, sse_login.csrf, "from the sse page")
            said.append("from the sse page")

            await say_form(refresh_user, front.node, ROOM, refresh_login.csrf, "by refresh")
            said.append("by refresh")

            for feed in feeds:
                for text in said:
                    await feed.wait_text(text)
            # in one order everywhere, whichever node stored each one
            orders = {feed.label: [t for t in feed.texts() if t in said] for feed in feeds}
            assert len({tuple(o) for o in orders.values()}) == 1, orders
            assert sorted(orders["ws@nginx"]) == sorted(said)

            page = await refresh_page(refresh_user, front.node, ROOM)
            shown = [text for _, text in page]
            for text in said:
                assert any(text in line for line in shown), (text, shown)

    assert nginx_refused(front) == [], nginx_refused(front)


@pytest.mark.slow
@pytest.mark.redis
async def test_idle_streams_and_a_held_long_poll_outlast_nginx(deployment: Deployment) -> None:
    """A long poll held its full 25 s is answered [] (not nginx's 504), and a WebSocket
    and an SSE stream left idle all that while (past the 15 s SSE heartbeat) still
    deliver the next message."""
    front = deployment.front
    origin = front.origin
    ws_user, sse_user, lp_user = (browser(origin) for _ in range(3))
    async with closing(ws_user, sse_user, lp_user):
        ws_login = await login(ws_user, front.node, "idle-ws", ROOM, demo="websocket")
        sse_login = await login(sse_user, front.node, "idle-sse", ROOM, demo="sse")
        lp_login = await login(lp_user, front.node, "idle-lp", ROOM, demo="longpolling")
        ws = await WSFeed.open(ws_user, front.node, ROOM, last=ws_login.last_id, label="ws")
        sse = await SSEFeed.open(
            sse_user, front.node, ROOM, last=sse_login.last_id, label="sse"
        )
        async with closing(ws, sse):
            cursor = lp_login.last_id
            held: list[object] | None = None
            # the first polls answer at once with the joins; then one is held to the end
            for _ in range(6):
                params = {"room": ROOM, "lastReceived": cursor}
                async with lp_user.get(
                    f"{front.origin}/longpolling/room/messages",
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=LONGPOLL_HOLD + 30),
                ) as response:
                    body = await response.text()
                    assert response.status == 200, (response.status, body)
                    events = await response.json()
                if not events:
                    held = events
                    break
                cursor = events[-1]["id"]
            assert held == [], "every poll was answered with events; none was held"

            await say_lp(lp_user, front.node, ROOM, lp_login.csrf, "after the quiet")
            await ws.wait_text("after the quiet")
            await sse.wait_text("after the quiet")
    assert nginx_refused(front) == [], nginx_refused(front)
