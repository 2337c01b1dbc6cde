"""The soak's clients: one per person, each on one technique, each keeping a ledger.

Every client enters its room through /demo with its own nickname and source address
(127.0.0.2, 127.0.0.3, ...), as people on other machines would, and then follows the
flow its room page follows:

- WebSocket: one socket from the page's last id; says are JSON frames with a
  client_id, acknowledged on the socket.
- SSE: one event stream from the page's last id (Last-Event-ID on every reconnect);
  says are long-poll POSTs.
- Long polling: GET .../messages?lastReceived=<last id> in a loop; says are POSTs.
- Active Refresh: reloads the page, reads `#thread`, says with the form (303).

Every say carries a client_id and is re-sent, with the same client_id, until it is
answered: after a timeout, a dropped connection, a 503, a 429 (after the wait it
names), or on the other node when one does not answer. Clients drop their connections
at random and resume from their cursor; slow readers stop reading while the flood room
floods and are cut off (4008, `event: cutoff`); firehose clients make that flood.
Every wait and every loop is bounded by the run's hard deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from yarl import URL

from chatroom.core.events import parse_cursor
from chatroom.core.websocket import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from chatroom.web.security import COOKIE
from tests.soak.ledger import ClientLedger, Page, Said, Stint, digest
from tests.support import RawWebSocket, SSEStream, room_page, thread_items

__all__ = ["TECHNIQUES", "Client", "Context", "Role", "make_client"]

TECHNIQUES = ("websocket", "sse", "longpolling", "refresh")

# What a connection may raise when the server is killed, restarted or cuts it.
NET_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)

# WebSocket close codes the soak expects to see
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
CLOSE_TOO_SLOW = 4008

Role = str  # "normal", "slow" (stops reading in floods), "firehose" (makes the floods)

WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    # what a page must show as text: markup, entities, quotes, other scripts
    "ünïcödé", "漢字", "emoji🙂", "<b>bold</b>", "&amp;", "&", ";", "'", '"',
]


@dataclass
class Context:
    """What every client of one run shares: where the servers are, and the run's phases."""

    ports: list[int]
    # a client gives up on anything at all past this (monotonic)
    hard_deadline: float
    # a flood: messages each firehose says, and their size
    flood_messages: int
    flood_size: int
    # a slow reader stops reading until enough of the flood is stored (see
    # `stall_bytes`) or it is over, at most this long
    stall: float
    # say pacing of a normal client: seconds between says, at random in this range
    pace: tuple[float, float]
    # raised once: no new says from then on (retries of pending ones go on)
    stop_saying: asyncio.Event = field(default_factory=asyncio.Event)
    # set when the next flood of the flood room begins (then replaced by a fresh one);
    # `flood_no` counts the floods so far
    next_flood: asyncio.Event = field(default_factory=asyncio.Event)
    flood_no: int = 0
    # the firehoses of a flood, those still saying, and set when they are all done
    firehoses: int = 0
    flooding: int = 0
    flood_over: asyncio.Event = field(default_factory=asyncio.Event)
    # bytes of the flood stored so far; set once past `stall_bytes`, more than a
    # stalled connection holds: the server has cut the slow readers off by then, and
    # they read on soon enough to hear it (a server waits 10 s for a close's answer)
    flood_bytes: int = 0
    stall_bytes: int = 2_700_000
    flooded: asyncio.Event = field(default_factory=asyncio.Event)
    # room -> the head each client must reach before it stops; set once all says are done
    targets: dict[str, str] = field(default_factory=dict)
    targets_set: asyncio.Event = field(default_factory=asyncio.Event)
    finish_within: float = 30.0
    stats: Counter[str] = field(default_factory=Counter)
    # answers the soak did not expect (a 500, an unknown error frame), by kind
    anomalies: Counter[str] = field(default_factory=Counter)
    anomaly_examples: dict[str, str] = field(default_factory=dict)
    # chance per step of dropping the connection, and of pressing Leave and coming back
    drop_chance: float = 0.08
    leave_chance: float = 0.015

    def url(self, node: int) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def anomaly(self, kind: str, detail: str = "") -> None:
        self.anomalies[kind] += 1
        self.anomaly_examples.setdefault(kind, detail[:300])

    def left(self) -> float:
        return self.hard_deadline - time.monotonic()

    def begin_flood(self) -> None:
        """Wake the slow readers and firehoses of the flood room: a flood begins."""
        began, self.next_flood = self.next_flood, asyncio.Event()
        self.flood_no += 1
        self.flooding = self.firehoses
        self.flood_over = asyncio.Event()
        self.flood_bytes = 0
        self.flooded = asyncio.Event()
        if not self.firehoses:
            self.flood_over.set()
        began.set()


async def _sleep_unless(seconds: float, *events: asyncio.Event) -> None:
    """Sleep `seconds`, or less if one of `events` is set meanwhile."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


class Outcome:
    """How one attempt at a say ended."""

    __slots__ = ("delay", "event_id", "kind", "reason")

    def __init__(
        self, kind: str, event_id: str | None = None, delay: float = 0.0, reason: str = ""
    ) -> None:
        # "ok", "retry" (after `delay`), "reenter" (view the page, then retry), "refused"
        self.kind = kind
        self.event_id = event_id
        self.delay = delay
        self.reason = reason


def _wait_of(reason: str) -> float:
    """The seconds a rate-limit answer names ("wait 0.2 s"), at least a little."""
    found = re.search(r"wait ([0-9.]+) s", reason)
    return max(0.05, float(found.group(1))) if found else 0.5


class Client:
    """One person: enters, says, reads, drops, leaves and comes back, keeps a ledger."""

    technique = ""

    def __init__(
        self,
        ctx: Context,
        number: int,
        name: str,
        room: str,
        address: str,
        role: Role,
        seed: int,
    ) -> None:
        self.ctx = ctx
        self.number = number
        self.name = name
        self.room = room
        self.address = address
        self.role = role
        self.rng = random.Random(seed)
        self.node = number % len(ctx.ports)
        self.ledger = ClientLedger(name, self.technique)
        self.csrf = ""
        self.stint: Stint | None = None
        self._http: aiohttp.ClientSession | None = None
        self._said = 0
        self._flood_seen = 0
        # set while the reader reads (a slow reader clears it while the room floods)
        self.flowing = asyncio.Event()
        self.flowing.set()
        # the reader task of a streaming client
        self._reader: asyncio.Task[None] | None = None
        # every say of this client answered (or given up on at the hard deadline)
        self.talked = asyncio.Event()

    # --- plumbing -------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    @property
    def url(self) -> str:
        return self.ctx.url(self.node)

    def failover(self) -> None:
        """Another node, if there is one (a browser behind DNS with two addresses)."""
        if len(self.ctx.ports) > 1:
            self.node = (self.node + 1) % len(self.ctx.ports)
            self.ctx.stats["failovers"] += 1

    def cookie(self) -> str | None:
        morsel = self.http.cookie_jar.filter_cookies(URL(self.url)).get(COOKIE)
        return None if morsel is None else morsel.value

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        within: float = 10.0,
        redirects: bool = True,
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        """(status, body) of one request to the current node; NET_ERRORS if none came."""
        async with self.http.request(
            method,
            self.url + path,
            params=params,
            allow_redirects=redirects,
            timeout=aiohttp.ClientTimeout(total=within),
            **kwargs,
        ) as response:
            return response.status, await response.read()

    def alive(self) -> bool:
        return self.ctx.left() > 0

    async def backoff(self, attempt: int) -> None:
        """Exponential, jittered, short: a restarted server comes back within seconds."""
        await asyncio.sleep(min(3.0, 0.1 * 2 ** min(attempt, 5)) * (0.5 + self.rng.random()))

    # --- the life of a client ---------------------------------------------------------

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            local_addr=(self.address, 0),
            limit=8,
            socket_factory=_small_window if self.role == "slow" else None,
        )
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector
        ) as http:
            self._http = http
            staller = (
                asyncio.create_task(self.stall_in_floods()) if self.role == "slow" else None
            )
            try:
                try:
                    await self.enter()
                    self.start_reading()
                    await self.talk()
                finally:
                    self.talked.set()
                await self.finish()
            finally:
                if staller is not None:
                    staller.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await staller
                await self.stop_reading()

    async def enter(self) -> None:
        """/demo with this client's nickname: the cookie, the page, a new stint."""
        attempt = 0
        while self.alive():
            try:
                status, body = await self.request(
                    "GET",
                    "/demo",
                    params={"user": self.name, "room": self.room, "demo": self.technique},
                )
            except NET_ERRORS:
                self.failover()
                attempt += 1
                await self.backoff(attempt)
                continue
            page = body.decode(errors="replace")
            if status == 200 and self.begin(page):
                return
            self.unexpected("demo", status, page)
            attempt += 1
            await self.backoff(attempt)
        raise TimeoutError(f"{self.name} could not enter {self.room}")

    def begin(self, page: str) -> bool:
        """A room page came: its CSRF token and last id start a new stint.

        False if it is not a room page (/demo led elsewhere, the welcome page's error).
        """
        found = room_page(page)
        if found is None:
            return False
        self.csrf = found.csrf
        self.stint = Stint(self.room, found.last_id or None)
        self.ledger.stints.append(self.stint)
        return True

    def unexpected(self, what: str, status: int, body: str) -> None:
        if status == 503:
            self.ctx.stats["answered 503"] += 1
            return
        self.ctx.anomaly(f"{what} answered {status}", body)

    async def talk(self) -> None:
        """Say, drop, leave and come back, until the run stops saying."""
        ctx = self.ctx
        floods = self.role == "firehose"
        while not ctx.stop_saying.is_set() and self.alive():
            if floods and self._flood_seen < ctx.flood_no:
                self._flood_seen = ctx.flood_no
                await self.firehose()
                continue
            wake = (ctx.stop_saying, ctx.next_flood) if floods else (ctx.stop_saying,)
            await _sleep_unless(self.rng.uniform(*ctx.pace), *wake)
            if ctx.stop_saying.is_set() or (floods and self._flood_seen < ctx.flood_no):
                continue
            roll = self.rng.random()
            # (a slow reader keeps its stalled connection: the server is to cut it off)
            if roll < ctx.drop_chance and self.flowing.is_set():
                ctx.stats["drops"] += 1
                await self.drop()
            elif roll < ctx.drop_chance + ctx.leave_chance:
                await self.leave_and_return()
            else:
                await self.say(self.text())

    def text(self, size: int = 0) -> str:
        self._said += 1
        cid = f"{self.name}.{self._said}"
        words = " ".join(self.rng.choices(WORDS, k=self.rng.randint(1, 8)))
        text = f"{cid} {words}"
        if size > len(text):
            text += " " + "x" * (size - len(text) - 1)
        return text

    async def stall_in_floods(self) -> None:
        """A slow reader: stop reading the moment a flood begins, whatever else it is
        doing; the server must cut it off rather than wait for it."""
        ctx = self.ctx
        while not ctx.stop_saying.is_set():
            await _sleep_unless(ctx.left(), ctx.next_flood, ctx.stop_saying)
            if ctx.stop_saying.is_set():
                return
            ctx.stats["stalls"] += 1
            self.flowing.clear()
            try:
                await _sleep_unless(ctx.stall, ctx.flooded, ctx.flood_over, ctx.stop_saying)
                await asyncio.sleep(0.5)
            finally:
                self.flowing.set()

    async def firehose(self) -> None:
        """Say the flood's big messages, many in flight at once."""
        ctx = self.ctx
        gate = asyncio.Semaphore(32)

        async def one() -> None:
            async with gate:
                text = self.text(ctx.flood_size)
                await self.say(text)
            ctx.flood_bytes += len(text.encode())
            if ctx.flood_bytes >= ctx.stall_bytes:
                ctx.flooded.set()

        try:
            await asyncio.gather(*(one() for _ in range(ctx.flood_messages)))
        finally:
            ctx.flooding -= 1
            if ctx.flooding <= 0:
                ctx.flood_over.set()
        ctx.stats["floods said"] += 1

    async def say(self, text: str) -> None:
        """Say `text` until it is answered: accepted, or refused for good."""
        cid = text.partition(" ")[0]
        said = Said(cid, self.room, text)
        self.ledger.said[cid] = said
        attempt = 0
        reentered = 0
        while self.alive():
            said.attempts += 1
            if said.attempts > 1:
                self.ctx.stats["say retries"] += 1
            outcome = await self.send_say(said)
            if outcome.kind == "ok":
                said.accepted = True
                said.answered_at = time.monotonic()
                said.event_id = outcome.event_id
                return
            if outcome.kind == "refused":
                said.refused = outcome.reason
                return
            if outcome.kind == "reenter":
                reentered += 1
                if reentered > 5:
                    said.refused = outcome.reason
                    return
                await self.view_page()
            attempt += 1
            await asyncio.sleep(outcome.delay or 0.0)
            if outcome.kind == "retry" and not outcome.delay:
                await self.backoff(attempt)

    async def send_say(self, said: Said) -> Outcome:
        raise NotImplementedError

    async def view_page(self) -> None:
        """Load the room page (it makes a poller present again); keep its CSRF token."""
        try:
            status, body = await self.request("GET", f"/{self.technique}/room",
                                              params={"room": self.room})
        except NET_ERRORS:
            self.failover()
            return
        found = room_page(body.decode(errors="replace")) if status == 200 else None
        if found is not None:
            self.csrf = found.csrf

    async def leave_and_return(self) -> None:
        """Press Leave, then enter again through /demo: a new stint from the new page."""
        self.ctx.stats["leaves"] += 1
        await self.stop_reading()
        attempt = 0
        while self.alive():
            try:
                status, body = await self.request(
                    "POST",
                    f"/{self.technique}/room/leave",
                    params={"room": self.room},
                    data={"csrf": self.csrf},
                    redirects=False,
                )
            except NET_ERRORS:
                self.failover()
                attempt += 1
                await self.backoff(attempt)
                continue
            if status != 303:
                self.unexpected("leave", status, body.decode(errors="replace"))
            break
        await self.enter()
        self.start_reading()

    async def finish(self) -> None:
        """Once every say is answered: read on until the room's head, then stop."""
        ctx = self.ctx
        await _sleep_unless(ctx.left(), ctx.targets_set)
        stint = self.stint
        target = ctx.targets.get(self.room)
        if stint is None or target is None:
            return
        stint.target = target
        goal = parse_cursor(target)
        deadline = time.monotonic() + ctx.finish_within
        while time.monotonic() < deadline and self.alive():
            last = parse_cursor(stint.last) if stint.last else None
            if goal is None or (
                last is not None and last.epoch == goal.epoch and last.offset >= goal.offset
            ):
                return
            await asyncio.sleep(0.1)
        ctx.stats["did not reach the head"] += 1

    def start_reading(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self.read(), name=f"read {self.name}")

    async def stop_reading(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def read(self) -> None:
        """A streaming client's reader: connect, receive, reconnect, until cancelled."""

    async def drop(self) -> None:
        """Drop the current connection as a network would (no goodbye)."""

    def received(self, frame: dict[str, Any]) -> None:
        if self.stint is None:
            return
        kind = frame.get("type")
        if kind in ("join", "leave", "message", "reset"):
            self.stint.receive(frame)
            if kind == "reset":
                self.ctx.stats["resets told"] += 1
        else:
            self.ctx.anomaly(f"{self.technique} sent type {kind!r}", str(frame))


class PostingClient(Client):
    """Says through the long-poll POST, as the SSE and long-poll pages do."""

    async def send_say(self, said: Said) -> Outcome:
        try:
            status, body = await self.request(
                "POST",
                "/longpolling/room/messages",
                params={"room": self.room},
                json={"message": said.text, "client_id": said.client_id, "csrf": self.csrf},
            )
        except NET_ERRORS:
            # no answer: it may be stored or not; the same client_id makes the retry safe
            self.failover()
            return Outcome("retry")
        return self.answered(status, body)

    def answered(self, status: int, body: bytes) -> Outcome:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = {}
        if status == 200 and isinstance(answer, dict) and "id" in answer:
            return Outcome("ok", str(answer["id"]))
        reason = str(answer.get("reason", "")) if isinstance(answer, dict) else ""
        if status == 429:
            self.ctx.stats["answered 429"] += 1
            return Outcome("retry", delay=_wait_of(reason))
        if status == 503:
            self.ctx.stats["answered 503"] += 1
            return Outcome("retry", delay=0.5)
        self.ctx.anomaly(f"say answered {status}", body.decode(errors="replace"))
        if status >= 500:
            return Outcome("retry", delay=0.5)
        return Outcome("reenter", delay=0.5, reason=f"{status} {reason}")


class LongPollClient(PostingClient):
    technique = "longpolling"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._poll: asyncio.Task[tuple[int, bytes]] | None = None

    async def read(self) -> None:
        attempt = 0
        while self.alive():
            stint = self.stint
            assert stint is not None
            params = {"room": self.room}
            if stint.last is not None:
                params["lastReceived"] = stint.last
            poll = self._poll = asyncio.ensure_future(
                self.request("GET", "/longpolling/room/messages", params=params, within=40.0)
            )
            try:
                await asyncio.wait({poll})
            finally:
                self._poll = None
                if not poll.done():
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *NET_ERRORS):
                        await poll
            if poll.cancelled():
                # dropped on purpose: poll again from the same cursor
                continue
            try:
                status, body = poll.result()
            except NET_ERRORS:
                self.failover()
                attempt += 1
                await self.backoff(attempt)
                continue
            if status == 200:
                attempt = 0
                for frame in orjson.loads(body):
                    self.received(frame)
                continue
            if status == 410:
                return  # left: the stint is over
            self.unexpected("poll", status, body.decode(errors="replace"))
            attempt += 1
            await self.backoff(attempt)

    async def drop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()


class SSEClient(PostingClient):
    technique = "sse"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._response: aiohttp.ClientResponse | None = None

    async def read(self) -> None:
        attempt = 0
        while self.alive():
            stint = self.stint
            assert stint is not None
            headers = {"Accept": "text/event-stream"}
            if stint.last is not None:
                headers["Last-Event-ID"] = stint.last
            try:
                async with self.http.get(
                    self.url + "/sse/room/events",
                    params={"room": self.room},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
                ) as response:
                    if response.status != 200:
                        if response.status == 410:
                            return
                        self.unexpected("SSE", response.status, await response.text())
                        attempt += 1
                        await self.backoff(attempt)
                        continue
                    attempt = 0
                    self._response = response
                    await self._events(SSEStream(response))
            except NET_ERRORS:
                self.failover()
                attempt += 1
            finally:
                self._response = None
            await self.backoff(attempt)

    async def _events(self, stream: SSEStream) -> None:
        while True:
            await self.flowing.wait()
            block = await stream.next(within=60.0)
            if block is None:
                self.ctx.stats["SSE ended by the server"] += 1
                return
            if block.event == "cutoff":
                reason = orjson.loads(block.data).get("error", "")
                self.ctx.stats[f"SSE cutoff ({reason})"] += 1
                continue
            if block.event == "left":
                return
            frame = block.json()
            if block.id is not None and frame.get("id") != block.id:
                self.ctx.anomaly("SSE id: line differs from the data's id", block.data)
            self.received(frame)

    async def drop(self) -> None:
        if self._response is not None:
            self._response.close()


class WebSocketClient(Client):
    technique = "websocket"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ws: RawWebSocket | None = None
        # client_id -> (frame to send, future of its outcome): says not answered yet
        self.pending: dict[str, tuple[bytes, asyncio.Future[Outcome]]] = {}

    async def read(self) -> None:
        attempt = 0
        while self.alive():
            stint = self.stint
            assert stint is not None
            path = f"/websocket/room/socket?room={self.room}"
            if stint.last is not None:
                path += f"&lastReceived={stint.last}"
            try:
                async with asyncio.timeout(10):
                    ws = await RawWebSocket.connect(
                        _Port(self.ctx.ports[self.node]),
                        path,
                        self.cookie(),
                        local_addr=self.address,
                        # a slow reader's window is small: the server's buffer fills first
                        rcvbuf=SLOW_RCVBUF if self.role == "slow" else None,
                    )
            except NET_ERRORS:
                self.failover()
                attempt += 1
                await self.backoff(attempt)
                continue
            try:
                if ws.status != 101:
                    body = await _rest(ws)
                    self.unexpected("WebSocket handshake", ws.status, ws.head + body)
                    attempt += 1
                else:
                    attempt = 0
                    self.ws = ws
                    for frame, _ in list(self.pending.values()):
                        _write(ws, frame)
                    await self._frames(ws)
            except NET_ERRORS:
                attempt += 1
            finally:
                self.ws = None
                await ws.close()
            await self.backoff(attempt)

    async def _frames(self, ws: RawWebSocket) -> None:
        while True:
            await self.flowing.wait()
            opcode, payload = await ws.read_frame()
            if opcode == OP_TEXT:
                self._text(orjson.loads(payload))
            elif opcode == OP_PING:
                _write(ws, RawWebSocket.frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self._closed(code, payload[2:].decode(errors="replace"))
                if _write(ws, RawWebSocket.frame(OP_CLOSE, payload[:2])):
                    with contextlib.suppress(*NET_ERRORS):
                        await ws.writer.drain()
                return

    def _closed(self, code: int | None, reason: str) -> None:
        stats = self.ctx.stats
        if code == CLOSE_TOO_SLOW:
            stats["WebSocket cutoff (4008)"] += 1
        elif code == CLOSE_GOING_AWAY:
            stats["WebSocket closed 1001"] += 1
        elif code == CLOSE_TRY_AGAIN:
            stats["WebSocket closed 1013"] += 1
        else:
            self.ctx.anomaly(f"WebSocket closed {code}", reason)

    def _text(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ack":
            self._answer(frame.get("client_id"), Outcome("ok", str(frame.get("id"))))
        elif kind == "error":
            cid, error = frame.get("client_id"), frame.get("error")
            reason = str(frame.get("reason", ""))
            if error == "rate_limited":
                self.ctx.stats["answered rate_limited"] += 1
                outcome = Outcome("retry", delay=float(frame.get("retry_after") or 0.5))
            elif error == "unavailable":
                self.ctx.stats["answered unavailable"] += 1
                outcome = Outcome("retry", delay=0.5)
            else:
                self.ctx.anomaly(f"WebSocket error frame {error}", str(frame))
                outcome = Outcome("reenter", delay=0.5, reason=f"{error} {reason}")
            self._answer(cid, outcome)
        else:
            self.received(frame)

    def _answer(self, cid: object, outcome: Outcome) -> None:
        entry = self.pending.get(cid) if isinstance(cid, str) else None
        if entry is None:
            # an answer to a re-sent say already answered: nothing waits for it
            return
        future = entry[1]
        if not future.done():
            future.set_result(outcome)

    async def send_say(self, said: Said) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        frame = orjson.dumps({"text": said.text, "client_id": said.client_id})
        wire = RawWebSocket.frame(OP_TEXT, frame)
        self.pending[said.client_id] = (wire, future)
        try:
            ws = self.ws
            if ws is not None:
                _write(ws, wire)
            # not answered within this: re-send (the reader also re-sends on reconnect)
            async with asyncio.timeout(8.0):
                return await future
        except TimeoutError:
            return Outcome("retry")
        finally:
            self.pending.pop(said.client_id, None)

    async def drop(self) -> None:
        ws = self.ws
        if ws is not None:
            ws.writer.transport.abort()


class RefreshClient(Client):
    technique = "refresh"

    def begin(self, page: str) -> bool:
        if not super().begin(page):
            return False
        self.record(page)
        return True

    def record(self, page: str) -> list[tuple[str, str, str, str]]:
        """Keep a page in the ledger; its thread's items."""
        found = room_page(page)
        if found is None:
            return []
        items = thread_items(page)
        self.ledger.pages.append(
            Page(
                self.room,
                found.last_id,
                [i for i, _, _, _ in items],
                [digest(kind, user, text if kind == "message" else None)
                 for _, kind, user, text in items],
            )
        )
        return items

    async def view_page(self) -> None:
        await self.reload()

    async def reload(self) -> list[tuple[str, str, str, str]]:
        """Load the page as the browser does; its thread's items."""
        try:
            status, body = await self.request(
                "GET", "/refresh/room", params={"room": self.room}
            )
        except NET_ERRORS:
            self.failover()
            return []
        page = body.decode(errors="replace")
        if status != 200:
            self.unexpected("refresh page", status, page)
            return []
        found = room_page(page)
        if found is not None:
            self.csrf = found.csrf
        return self.record(page)

    async def talk(self) -> None:
        # Active Refresh reloads on its own: a reader of pages between says
        reloads = asyncio.create_task(self._reload())
        try:
            await super().talk()
        finally:
            reloads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloads

    async def _reload(self) -> None:
        while self.alive():
            await asyncio.sleep(self.rng.uniform(1.5, 4.0))
            await self.view_page()

    async def send_say(self, said: Said) -> Outcome:
        try:
            status, body = await self.request(
                "POST",
                "/refresh/room",
                params={"room": self.room},
                data={"message": said.text, "client_id": said.client_id, "csrf": self.csrf},
                redirects=False,
            )
        except NET_ERRORS:
            self.failover()
            return Outcome("retry")
        if status == 303:
            # The form's answer names no id: the page it leads to shows it (history is
            # matched by client_id if the page has moved past it).
            items = await self.reload()
            shown = [i for i, _, user, text in items if user == self.name and text == said.text]
            return Outcome("ok", shown[-1] if shown else None)
        page = body.decode(errors="replace")
        if status == 429:
            self.ctx.stats["answered 429"] += 1
            return Outcome("retry", delay=1.0)
        if status == 503:
            self.ctx.stats["answered 503"] += 1
            return Outcome("retry", delay=0.5)
        self.ctx.anomaly(f"refresh say answered {status}", page)
        if status >= 500:
            return Outcome("retry", delay=0.5)
        return Outcome("reenter", delay=0.5, reason=str(status))

    async def finish(self) -> None:
        await _sleep_unless(self.ctx.left(), self.ctx.targets_set)
        await self.view_page()


@dataclass
class _Port:
    port: int


def _write(ws: RawWebSocket, data: bytes) -> bool:
    """Write to a socket unless it is closing (the server hung up, or this client
    dropped it): uvloop raises on a write to a closed transport. Whether it wrote."""
    transport = ws.writer.transport
    if transport.is_closing():
        return False
    try:
        transport.write(data)
    except (RuntimeError, OSError):
        return False
    return True


# A slow reader's receive buffer: small, so the server's buffer fills and not the kernel's.
SLOW_RCVBUF = 4096


def _small_window(info: tuple[Any, ...]) -> socket.socket:
    """A client socket whose receive buffer is small (set before connect, as it must be)."""
    family, kind, proto, _, _ = info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    return sock


async def _rest(ws: RawWebSocket) -> str:
    """What follows a refused handshake's head (its reason), read briefly."""
    with contextlib.suppress(*NET_ERRORS):
        async with asyncio.timeout(2):
            return (await ws.reader.read(2000)).decode(errors="replace")
    return ""


_KINDS: dict[str, type[Client]] = {
    "websocket": WebSocketClient,
    "sse": SSEClient,
    "longpolling": LongPollClient,
    "refresh": RefreshClient,
}


def make_client(
    technique: str,
    ctx: Context,
    number: int,
    name: str,
    room: str,
    address: str,
    role: Role,
    seed: int,
) -> Client:
    return _KINDS[technique](ctx, number, name, room, address, role, seed)

