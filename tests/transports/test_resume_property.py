"""Property: says, drops and resumes over WebSocket deliver every stored event once, in order."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import (
    UNLIMITED,
    RawWebSocket,
    Server,
    cookie_of,
    history,
    login,
    new_client,
    open_ws,
    serving,
    ws_until,
)

_rooms = itertools.count()

Op = tuple[str, int]

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("say_a"), st.integers(1, 3)),
        st.tuples(st.just("say_b"), st.integers(1, 3)),
        # read k more events (if that many are due), then vanish without a close frame
        st.tuples(st.just("drop"), st.integers(0, 4)),
        # the same, but with a polite close
        st.tuples(st.just("close"), st.integers(0, 4)),
        # A says again what it said last (its answer was "lost")
        st.tuples(st.just("retry"), st.just(0)),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(tmp_path, **UNLIMITED) as server:
        yield server


class Reader:
    """Client A: a raw WebSocket that can vanish at any point and resume from its cursor."""

    def __init__(self, server: Server, cookie: str, room: str) -> None:
        self.server = server
        self.cookie = cookie
        self.room = room
        self.raw: RawWebSocket | None = None
        self.events: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.connections = 0

    async def connect(self) -> None:
        path = f"/websocket/room/socket?room={self.room}"
        if self.events:
            path += f"&lastReceived={self.events[-1]['id']}"
        self.raw = await RawWebSocket.connect(self.server, path, self.cookie)
        assert self.raw.status == 101, self.raw.head
        self.connections += 1

    async def ensure(self) -> RawWebSocket:
        if self.raw is None:
            await self.connect()
        assert self.raw is not None
        return self.raw

    async def read_one(self) -> None:
        raw = await self.ensure()
        async with asyncio.timeout(5):
            opcode, payload = await raw.read_frame()
        assert opcode == 0x1, (opcode, payload)
        frame = orjson.loads(payload)
        assert frame.get("type") not in ("error", "reset"), frame
        if frame.get("type") == "ack":
            self.acks.append(frame)
        else:
            self.events.append(frame)

    async def read_events(self, until: int) -> None:
        while len(self.events) < until:
            await self.read_one()

    async def read_acks(self, until: int) -> None:
        while len(self.acks) < until:
            await self.read_one()

    async def say(self, text: str, client_id: str) -> None:
        raw = await self.ensure()
        raw.send_frame(0x1, orjson.dumps({"text": text, "client_id": client_id}))
        await raw.writer.drain()

    async def gone(self, polite: bool) -> None:
        raw = self.raw
        if raw is None:
            return
        self.raw = None
        if polite:
            raw.send_frame(0x8, b"\x03\xe8")
            await raw.writer.drain()
            await raw.close()
        else:
            raw.transport.abort()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
async def test_drops_and_resumes_deliver_every_event_once_in_order(
    fast: Server, ops: list[Op]
) -> None:
    server = fast
    room = f"prop{next(_rooms)}"
    async with new_client() as a_client, new_client() as b_client:
        await login(a_client, server, "anna", room=room, demo="websocket")
        await login(b_client, server, "ben", room=room, demo="websocket")
        # the joins; every later event is a say
        due = 2
        reader = Reader(server, cookie_of(a_client, server), room)
        said: dict[str, str] = {}
        async with open_ws(b_client, server, room=room) as b:
            await reader.connect()
            for n, (op, k) in enumerate(ops):
                if op == "say_a":
                    for i in range(k):
                        said[f"a{n}.{i}"] = f"anna {n}.{i}"
                        await reader.say(said[f"a{n}.{i}"], f"a{n}.{i}")
                    await reader.read_acks(len(reader.acks) + k)
                    due += k
                elif op == "say_b":
                    for i in range(k):
                        await b.send_json({"text": f"ben {n}.{i}", "client_id": f"b{n}.{i}"})
                    await ws_until(
                        b, lambda fs, k=k: sum(f.get("type") == "ack" for f in fs) >= k
                    )
                    due += k
                elif op == "retry":
                    if not said:
                        continue
                    client_id, text = next(reversed(said.items()))
                    first = next(a for a in reader.acks if a["client_id"] == client_id)
                    await reader.say(text, client_id)
                    await reader.read_acks(len(reader.acks) + 1)
                    assert reader.acks[-1] == first
                else:
                    if reader.raw is not None:
                        await reader.read_events(min(due, len(reader.events) + k))
                    await reader.gone(polite=op == "close")
            await reader.ensure()
            await reader.read_events(due)
            await reader.gone(polite=True)
        stored = await history(a_client, server, room)
    assert len(stored) == due
    # exactly the stored events, once each, in order, across every reconnect
    assert [e["id"] for e in reader.events] == [e["id"] for e in stored]
    assert reader.events == stored
    texts = [e["text"] for e in stored if e["user"] == "anna" and e["type"] == "message"]
    assert texts == list(said.values())
