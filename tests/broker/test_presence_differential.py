"""The presence rules exist twice: core.presence.PresenceTable (memory, sqlite) and the
Lua scripts of chatroom.broker.redis.presence, which must be atomic in Redis. This holds
the copies to each other: the same moves, at the same times, give the same outcome.

Both run on one ManualClock (Redis gets it as the scripts' clock argument); times are
in quarter seconds, exact both as floats and as Redis's milliseconds.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatroom.broker.backend import Presence
from chatroom.broker.local_presence import LocalPresence
from chatroom.broker.redis import RedisPresence
from chatroom.broker.redis.keys import Keys
from tests.support import ManualClock

pytestmark = pytest.mark.redis

ROOMS = ["lobby", "kitchen"]
# look-alikes of one name, and another name
USERS = ["alice", "Alice", "\u0430lice", "bob"]
SESSIONS = ["s1", "s2"]
CONNS = ["ws", "poll"]
SPANS = [0.0, 0.25, 0.5, 1.0, 5.0]

_prefixes = itertools.count()

touch = st.tuples(
    st.just("touch"), st.sampled_from(ROOMS), st.sampled_from(USERS),
    st.sampled_from(SESSIONS), st.sampled_from(CONNS), st.sampled_from(SPANS[1:]),
    st.booleans(),
)
check = st.tuples(
    st.just("check"), st.sampled_from(ROOMS), st.sampled_from(USERS), st.sampled_from(SESSIONS)
)
release = st.tuples(
    st.just("release"), st.sampled_from(ROOMS), st.sampled_from(USERS),
    st.sampled_from(CONNS), st.sampled_from(SPANS),
)
leave = st.tuples(
    st.just("leave"), st.sampled_from(ROOMS), st.sampled_from(USERS), st.sampled_from(SESSIONS)
)
look = st.tuples(st.sampled_from(["expire", "counts"])) | st.tuples(
    st.just("members"), st.sampled_from(ROOMS)
)
wait = st.tuples(st.just("wait"), st.sampled_from(SPANS[1:]))
moves = st.lists(touch | check | release | leave | look | wait, min_size=1, max_size=40)


def _normal(result: Any) -> Any:
    """Outcomes compared as sets where the order is not part of the contract."""
    if isinstance(result, list):
        return sorted(result)
    return result


async def _outcome(call: Awaitable[Any]) -> Any:
    try:
        return _normal(await call)
    except Exception as exc:
        return type(exc).__name__


def _call(presence: Presence, move: tuple[Any, ...]) -> Awaitable[Any]:
    kind, *args = move
    if kind == "touch":
        room, user, session, conn, ttl, rejoin = args
        return presence.touch(room, user, session, conn, ttl, rejoin)
    if kind == "check":
        return presence.check(*args)
    if kind == "release":
        return presence.release(*args)
    if kind == "leave":
        return presence.leave(*args)
    if kind == "members":
        return presence.members(*args)
    if kind == "counts":
        return presence.counts()
    assert kind == "expire"
    return presence.expire()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(moves=moves)
async def test_the_lua_copy_of_the_presence_rules_agrees_with_the_table(
    client: aioredis.Redis, moves: list[tuple[Any, ...]]
) -> None:
    clock = ManualClock()
    table = LocalPresence(clock)
    # a key prefix per example: each starts from an empty Redis
    lua = RedisPresence(client, Keys(f"diff{next(_prefixes)}:"), clock)
    for step, move in enumerate(moves):
        if move[0] == "wait":
            clock.advance(move[1])
            continue
        expected = await _outcome(_call(table, move))
        got = await _outcome(_call(lua, move))
        assert got == expected, f"move {step} {move}: Lua {got!r}, table {expected!r}"
    # and what both leave behind, as it runs out
    for span in [0.0, *SPANS[1:]]:
        clock.advance(span)
        for room in ROOMS:
            assert await lua.members(room) == await table.members(room), f"+{span}s"
        assert await lua.counts() == await table.counts(), f"+{span}s"
        assert _normal(await lua.expire()) == _normal(await table.expire()), f"+{span}s"
