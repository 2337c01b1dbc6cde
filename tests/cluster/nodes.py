"""Cluster test helpers: `chatroom serve` nodes as separate processes, and clients.

A Node is one `python -m chatroom serve` process on a free loopback port, logging to a
file. A Cluster starts nodes against one backend URL and always stops them at
teardown (SIGTERM, then SIGKILL to its process group if it lingers). Every node signs
cookies with the same secret, so a session from one node is good on every other.

Feeds collect what a subscriber receives (WebSocket, SSE, long polling) in a
background task, so a test can publish from anywhere and then wait, bounded in time,
for what each subscriber must have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from chatroom.core.events import Position, parse_cursor
from tests.redis_server import free_port
from tests.support import Login, login, new_client

__all__ = [
    "SECRET",
    "Cluster",
    "Frame",
    "LPFeed",
    "Login",
    "Node",
    "SSEFeed",
    "WSFeed",
    "assert_contiguous",
    "demo_status",
    "has_text",
    "login",
    "new_client",
    "position",
    "presence",
    "ready_status",
    "refresh_page",
    "say_form",
    "say_lp",
    "say_lp_status",
    "wait_exit",
    "wait_ready",
]

SECRET = "cluster-test-secret-0123456789abcdef"
READY_WITHIN = 20.0
STOP_WITHIN = 8.0

Frame = dict[str, Any]
EVENT_TYPES = ("join", "leave", "message")


# --- nodes -------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """Pids of this process's children (the workers of a --workers supervisor)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []


def _env(extra: dict[str, str]) -> dict[str, str]:
    # no CHATROOM_* from the caller's environment: each node gets exactly its flags
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATROOM_")}
    env.update(extra)
    return env


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int:
    """The exit code, once the process has exited; TimeoutError after `within` seconds."""
    try:
        return await asyncio.to_thread(proc.wait, within)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"process {proc.pid} still running after {within} s") from None


async def ready_status(
    http: aiohttp.ClientSession, node: Node, path: str = "/readyz"
) -> int | None:
    """/readyz's status (or another health route's), or None if the node does not answer."""
    try:
        async with http.get(
            node.url + path, timeout=aiohttp.ClientTimeout(total=3)
        ) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def wait_ready(node: Node, within: float = READY_WITHIN, path: str = "/readyz") -> None:
    """Until the node answers `path` with 200 (/healthz: it listens and its loop turns)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession() as http:
        while True:
            if not node.alive():
                raise AssertionError(
                    f"{node.name} exited with {node.proc.returncode}:\n{node.log()}"
                )
            if await ready_status(http, node, path) == 200:
                return
            if loop.time() > deadline:
                raise AssertionError(f"{node.name} not ready within {within} s:\n{node.log()}")
            await asyncio.sleep(0.05)


class Cluster:
    """Starts nodes on free ports against one backend URL; stops every one at teardown."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.workdir = workdir
        self.nodes: list[Node] = []

    def spawn(
        self,
        *,
        backend: str | None = None,
        presence_ttl: float | None = None,
        workers: int | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> Node:
        """Start one node (not waiting for it to be ready); `args`: more `serve` flags."""
        name = f"node{len(self.nodes) + 1}"
        port = port or free_port()
        serve = [
            "serve", "--host", "127.0.0.1", "--port", str(port),
            "--backend", backend or self.backend, "--secret", SECRET, "--log-level", "INFO",
            *args,
        ]
        env: dict[str, str] = {}
        if presence_ttl is not None:
            serve += ["--presence-ttl", str(presence_ttl)]
        argv = [sys.executable, "-m", "chatroom", *serve]
        if workers is not None:
            argv += ["--workers", str(workers)]
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=_env(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own process group: teardown can end it and any workers it started
                start_new_session=True,
            )
        node = Node(name, port, proc, log_path)
        self.nodes.append(node)
        return node

    async def start(self, count: int = 1, **options: Any) -> list[Node]:
        """Start `count` nodes at once and wait until each answers /readyz with 200."""
        nodes = [self.spawn(**options) for _ in range(count)]
        await asyncio.gather(*(wait_ready(n) for n in nodes))
        return nodes

    async def kill(self, node: Node) -> None:
        """SIGKILL: the node gets no chance to say goodbye to anyone."""
        node.proc.send_signal(signal.SIGKILL)
        await wait_exit(node.proc, STOP_WITHIN)

    async def close(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            with contextlib.suppress(TimeoutError):
                await wait_exit(node.proc, STOP_WITHIN)
            if node.alive():
                # it did not stop in time: end it and whatever it started
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(node.pid, signal.SIGKILL)
                node.proc.wait(5)


# --- clients -------------------------------------------------------------------------
# new_client() and login() are tests/support.py's: a node has a url like a Server, and
# cookies ignore the port, so a session made on one node is sent to every node, as a
# browser does behind one host name.


async def demo_status(
    client: aiohttp.ClientSession, node: Node, user: str, room: str, demo: str = "longpolling"
) -> tuple[int, str]:
    async with client.get(
        f"{node.url}/demo", params={"user": user, "room": room, "demo": demo}
    ) as response:
        return response.status, await response.text()


async def say_lp_status(
    client: aiohttp.ClientSession,
    node: Node,
    room: str,
    csrf: str,
    text: str,
    client_id: str | None = None,
) -> tuple[int, Frame]:
    body: Frame = {"message": text, "csrf": csrf}
    if client_id is not None:
        body["client_id"] = client_id
    async with client.post(
        f"{node.url}/longpolling/room/messages", params={"room": room}, json=body
    ) as response:
        answer: Frame = orjson.loads(await response.read())
        return response.status, answer


async def say_lp(
    client: aiohttp.ClientSession,
    node: Node,
    room: str,
    csrf: str,
    text: str,
    client_id: str | None = None,
) -> Frame:
    """Say through the long-poll POST; assert it was stored; the stored event."""
    status, answer = await say_lp_status(client, node, room, csrf, text, client_id)
    assert status == 200, answer
    return answer


async def say_form(
    client: aiohttp.ClientSession, node: Node, room: str, csrf: str, text: str
) -> None:
    """Say through the Active Refresh form: 303 back to the page."""
    async with client.post(
        f"{node.url}/refresh/room",
        params={"room": room},
        data={"message": text, "csrf": csrf},
        allow_redirects=False,
    ) as response:
        body = await response.text()
        assert response.status == 303, body
        assert response.headers["Location"] == f"/refresh/room?room={room}"


class _Thread(HTMLParser):
    """(data-id, text content) of every `#thread .message` item of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[str, str]] = []
        self._depth = 0  # > 0 inside #thread
        self._item: list[str] | None = None
        self._item_id = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if attr.get("id") == "thread":
            self._depth = 1
            return
        if self._depth:
            self._depth += 1
            if tag == "li" and "message" in (attr.get("class") or "").split():
                self._item = []
                self._item_id = attr.get("data-id") or ""

    def handle_endtag(self, tag: str) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if tag == "li" and self._item is not None:
            self.messages.append((self._item_id, " ".join("".join(self._item).split())))
            self._item = None

    def handle_data(self, data: str) -> None:
        if self._item is not None:
            self._item.append(data)


async def refresh_page(
    client: aiohttp.ClientSession, node: Node, room: str
) -> list[tuple[str, str]]:
    """The Active Refresh page's messages: (id, text content) of each `#thread .message`."""
    async with client.get(f"{node.url}/refresh/room", params={"room": room}) as response:
        page = await response.text()
        assert response.status == 200, page
    parser = _Thread()
    parser.feed(page)
    parser.close()
    return parser.messages


async def presence(client: aiohttp.ClientSession, node: Node, room: str) -> list[str]:
    async with client.get(f"{node.url}/api/rooms/{room}/presence") as response:
        body = await response.json()
        assert response.status == 200, body
    members: list[str] = body["members"]
    return members


# --- what subscribers receive --------------------------------------------------------


def position(frame: Frame) -> Position:
    pos = parse_cursor(frame["id"])
    assert pos is not None, frame
    return pos


def events_of(frames: Sequence[Frame]) -> list[Frame]:
    return [f for f in frames if f.get("type") in EVENT_TYPES]


def has_text(text: str) -> Callable[[list[Frame]], bool]:
    return lambda frames: any(
        f.get("type") == "message" and f.get("text") == text for f in frames
    )


def assert_contiguous(events: Sequence[Frame], after: str | None = None) -> None:
    """One epoch, offsets growing by exactly one (from just after `after` if given)."""
    assert events, "no events"
    positions = [position(e) for e in events]
    epochs = {p.epoch for p in positions}
    assert len(epochs) == 1, f"events from several epochs: {[e['id'] for e in events]}"
    first = positions[0].offset
    if after is not None:
        start = parse_cursor(after)
        assert start is not None, after
        assert start.epoch == positions[0].epoch, (after, events[0])
        first = start.offset + 1
    offsets = [p.offset for p in positions]
    assert offsets == list(range(first, first + len(offsets))), (
        f"gap, duplicate or disorder: {offsets}"
    )


class Feed:
    """Frames one subscriber received, collected by a background task."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _add(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.create_task(coro, name=self.label)
        self._task.add_done_callback(lambda _: self._changed.set())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def events(self) -> list[Frame]:
        return events_of(self.frames)

    def texts(self) -> list[str]:
        return [f["text"] for f in self.frames if f.get("type") == "message"]

    def _ended(self) -> str:
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return "cancelled"
        return repr(task.exception())

    async def until(
        self, done: Callable[[list[Frame]], bool], within: float = 10.0
    ) -> list[Frame]:
        """Wait until done(frames) holds; fail (saying what came) after `within` seconds."""
        try:
            async with asyncio.timeout(within):
                while True:
                    self._changed.clear()
                    if done(self.frames):
                        return self.frames
                    if not self.running:
                        raise AssertionError(
                            f"{self.label} ended ({self._ended()}) after {self.frames}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.label}: not done within {within} s; received {self.frames}"
            ) from None

    async def wait_text(self, text: str, within: float = 10.0) -> list[Frame]:
        return await self.until(has_text(text), within)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class WSFeed(Feed):
    def __init__(self, label: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(label)
        self.ws = ws
        # how the connection ended: (message type, close code), once it has
        self.ended: tuple[aiohttp.WSMsgType, int | None] | None = None

    @classmethod
    async def open(
        cls,
        client: aiohttp.ClientSession,
        node: Node,
        room: str,
        last: str | None = None,
        label: str = "ws",
    ) -> WSFeed:
        params = {"room": room}
        if last:
            params["lastReceived"] = last
        ws = await client.ws_connect(f"{node.ws_url}/websocket/room/socket", params=params)
        feed = cls(f"{label}@{node.name}", ws)
        feed._run(feed._read())
        return feed

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.ended = (msg.type, self.ws.close_code)
                return
            self._add(orjson.loads(msg.data))

    async def say(self, text: str, client_id: str, within: float = 10.0) -> Frame:
        """Send a message frame; the server's ack (or error) frame for it.

        An error frame without a client_id (the server sends "unavailable" so) counts
        as the answer too: this client has one say in flight at a time.
        """
        sent_at = len(self.frames)
        await self.ws.send_str(orjson.dumps({"text": text, "client_id": client_id}).decode())

        def answer(frames: list[Frame]) -> Frame | None:
            for f in frames[sent_at:]:
                if f.get("type") in ("ack", "error") and f.get("client_id") in (client_id, None):
                    return f
            return None

        return answer(await self.until(lambda fs: answer(fs) is not None, within)) or {}

    async def close(self) -> None:
        await super().close()
        await self.ws.close()


class SSEFeed(Feed):
    def __init__(self, label: str, response: aiohttp.ClientResponse) -> None:
        super().__init__(label)
        self.response = response
        # the `id:` field of each data block (None for a reset, which has no id)
        self.sse_ids: list[str | None] = []

    @classmethod
    async def open(
        cls,
        client: aiohttp.ClientSession,
        node: Node,
        room: str,
        last: str | None = None,
        last_event_id: str | None = None,
        label: str = "sse",
    ) -> SSEFeed:
        params = {"room": room}
        if last:
            params["lastReceived"] = last
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        response = await client.get(
            f"{node.url}/sse/room/events",
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=120),
        )
        if response.status != 200:
            body = await response.text()
            response.release()
            raise AssertionError(f"SSE refused: {response.status} {body}")
        feed = cls(f"{label}@{node.name}", response)
        feed._run(feed._read())
        return feed

    async def _read(self) -> None:
        data: list[str] = []
        event_id: str | None = None
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    self.sse_ids.append(event_id)
                    self._add(orjson.loads("\n".join(data)))
                data, event_id = [], None
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "id":
                event_id = value

    async def close(self) -> None:
        await super().close()
        self.response.close()


class LPFeed(Feed):
    """A long-polling client: each poll resumes from the last id it got, on the next node."""

    def __init__(
        self,
        label: str,
        client: aiohttp.ClientSession,
        nodes: Sequence[Node],
        room: str,
        last: str | None,
    ) -> None:
        super().__init__(label)
        self.client = client
        self.nodes = list(nodes)
        self.room = room
        self.cursor = last
        # which node answered each poll, in order
        self.answered_by: list[str] = []

    @classmethod
    def open(
        cls,
        client: aiohttp.ClientSession,
        nodes: Sequence[Node],
        room: str,
        last: str | None = None,
        label: str = "lp",
    ) -> LPFeed:
        feed = cls(f"{label}@{'+'.join(n.name for n in nodes)}", client, nodes, room, last)
        feed._run(feed._read())
        return feed

    async def _read(self) -> None:
        turn = 0
        while True:
            node = self.nodes[turn % len(self.nodes)]
            turn += 1
            params = {"room": self.room}
            if self.cursor:
                params["lastReceived"] = self.cursor
            async with self.client.get(
                f"{node.url}/longpolling/room/messages", params=params
            ) as response:
                body = await response.read()
                assert response.status == 200, body
            self.answered_by.append(node.name)
            for frame in orjson.loads(body):
                self._add(frame)
                if frame.get("type") in EVENT_TYPES:
                    # a reset's id is the oldest retained one, not a cursor
                    self.cursor = frame["id"]
