"""Presence in Redis, shared by every process: who is in each room.

Expiries are taken from Redis's own clock (TIME), so nodes with skewed clocks agree;
scripts make join and leave transitions atomic, so each is reported exactly once in the
whole cluster. The rules are core.presence's; Lua has its own copy of them only because
each move must be one atomic step in Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatroom.broker.redis.keys import Keys, text, unavailable
from chatroom.core.presence import LEFT_TTL, LeftRoom, NicknameTaken, NotMember
from chatroom.core.validation import skeleton

__all__ = ["RedisPresence"]


# Per room a hash key -> session, a hash key -> the name shown, a zset key -> latest
# expiry, and per key a zset conn -> expiry, where the key is the nickname's skeleton
# (look-alike names are one name); per (room, session) that pressed Leave a marker with
# an expiry. Times are ms, from Redis's clock (TIME) unless the caller passes its own as
# every script's last argument (a test's clock); '' means Redis's.
_PRESENCE_LIB = """
local function now_ms()
  local given = ARGV[#ARGV]
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(ckey, now)
  return #redis.call('ZRANGEBYSCORE', ckey, '(' .. now, '+inf', 'LIMIT', 0, 1) > 0
end
local function restamp(users, ckey, key)
  local top = redis.call('ZREVRANGE', ckey, 0, 0, 'WITHSCORES')
  if #top == 0 then redis.call('ZREM', users, key) else redis.call('ZADD', users, top[2], key) end
end
"""

_TOUCH = _PRESENCE_LIB + """
-- KEYS: members, users, conns of the key, presence rooms, left marker of the session, names
-- ARGV: room, key, session, conn, ttl ms, rejoin ('1' or '0'), name, clock
-- Returns 1 joined, 0 already a member, -1 nickname taken, -2 this session left.
local rejoin = ARGV[6] == '1'
local now = now_ms()
local holder = redis.call('HGET', KEYS[1], ARGV[2])
if holder and holder ~= ARGV[3] and alive(KEYS[3], now) then return -1 end
if rejoin then
  redis.call('DEL', KEYS[5])
elseif redis.call('EXISTS', KEYS[5]) == 1 then
  return -2
end
-- a member stays listed until its leave is reported: an expired one not reaped yet
-- never left in the room's eyes, so its return is no second join
local joined = 0
if not holder then joined = 1 end
if holder ~= ARGV[3] or rejoin then
  -- a new holder (the expired one's connections go with it), or the welcome page
  if holder and holder ~= ARGV[3] then redis.call('DEL', KEYS[3]) end
  redis.call('HSET', KEYS[6], ARGV[2], ARGV[7])
else
  redis.call('HSETNX', KEYS[6], ARGV[2], ARGV[7])
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], 'GT', now + tonumber(ARGV[5]), ARGV[4])
redis.call('ZADD', KEYS[3], 'NX', now + tonumber(ARGV[5]), ARGV[4])
restamp(KEYS[2], KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
return joined
"""

_CHECK = _PRESENCE_LIB + """
-- KEYS: members, conns of the key, left marker of the session; ARGV: key, session, clock
-- Returns 0 a live member, -1 nickname taken, -2 this session left, -3 not a member.
local holder = redis.call('HGET', KEYS[1], ARGV[1])
local live = holder and alive(KEYS[2], now_ms())
if live and holder ~= ARGV[2] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return -2 end
if not live then return -3 end
return 0
"""

_RELEASE = _PRESENCE_LIB + """
-- KEYS: users, conns of the key; ARGV: key, conn, linger ms, clock
local now = now_ms()
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  redis.call('ZADD', KEYS[2], 'LT', now + tonumber(ARGV[3]), ARGV[2])
  restamp(KEYS[1], KEYS[2], ARGV[1])
end
return 0
"""

_LEAVE = _PRESENCE_LIB + """
-- KEYS: members, users, conns of the key, left marker of the session, names
-- ARGV: key, session, left ttl s, clock
redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""

_EXPIRE = _PRESENCE_LIB + """
-- KEYS: presence rooms; ARGV: key prefix, clock. Returns room, name, room, name, ...
local now = now_ms()
local gone = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local base = ARGV[1] .. '{' .. room .. '}:'
  local users = base .. 'users'
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', users, '-inf', now)) do
    local ckey = base .. 'c:' .. key
    redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now)
    if redis.call('ZCARD', ckey) == 0 then
      local name = redis.call('HGET', base .. 'names', key)
      redis.call('HDEL', base .. 'members', key)
      redis.call('HDEL', base .. 'names', key)
      redis.call('ZREM', users, key)
      gone[#gone + 1] = room
      gone[#gone + 1] = name or key
    else
      restamp(users, ckey, key)
    end
  end
  if redis.call('ZCARD', users) == 0 and redis.call('HLEN', base .. 'members') == 0 then
    redis.call('SREM', KEYS[1], room)
  end
end
return gone
"""

_MEMBERS = _PRESENCE_LIB + """
-- KEYS: users, names; ARGV: clock. Returns the names of the live members.
local out = {}
for i, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms(), '+inf')) do
  out[i] = redis.call('HGET', KEYS[2], key) or key
end
return out
"""

_COUNTS = _PRESENCE_LIB + """
-- KEYS: presence rooms; ARGV: key prefix, clock. Returns room, count, ...
local now = now_ms()
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = redis.call('ZCOUNT', ARGV[1] .. '{' .. room .. '}:users', '(' .. now, '+inf')
  if n > 0 then out[#out + 1] = room; out[#out + 1] = n end
end
return out
"""


def _raise_for(result: int, room: str, user: str) -> None:
    if result == -1:
        raise NicknameTaken(room, user)
    if result == -2:
        raise LeftRoom(room, user)
    if result == -3:
        raise NotMember(room, user)


class RedisPresence:
    """The Presence protocol in Redis: the rules of core.presence.PresenceTable, made
    atomic in Lua (tests/broker/test_presence_differential.py holds the two to each
    other). `clock` (seconds) replaces Redis's own clock, for tests."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, clock: Callable[[], float] | None = None
    ) -> None:
        self._r = client
        self._k = keys
        self._clock = clock
        self._touch = client.register_script(_TOUCH)
        self._check = client.register_script(_CHECK)
        self._release = client.register_script(_RELEASE)
        self._leave = client.register_script(_LEAVE)
        self._expire = client.register_script(_EXPIRE)
        self._members = client.register_script(_MEMBERS)
        self._counts = client.register_script(_COUNTS)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        now = "" if self._clock is None else round(self._clock() * 1000)
        try:
            return await script(keys=keys, args=[*args, now])
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def touch(
        self, room: str, user: str, session: str, conn: str, ttl: float, rejoin: bool = False
    ) -> bool:
        k, key = self._k, skeleton(user)
        result = await self._run(
            self._touch,
            [
                k.members(room), k.users(room), k.conns(room, key), k.presence_rooms,
                k.left(room, session), k.names(room),
            ],
            [room, key, session, conn, int(ttl * 1000), "1" if rejoin else "0", user],
        )
        _raise_for(result, room, user)
        return bool(result)

    async def check(self, room: str, user: str, session: str) -> None:
        k, key = self._k, skeleton(user)
        result = await self._run(
            self._check,
            [k.members(room), k.conns(room, key), k.left(room, session)],
            [key, session],
        )
        _raise_for(result, room, user)

    async def release(self, room: str, user: str, conn: str, linger: float) -> None:
        k, key = self._k, skeleton(user)
        await self._run(
            self._release,
            [k.users(room), k.conns(room, key)],
            [key, conn, int(linger * 1000)],
        )

    async def leave(self, room: str, user: str, session: str) -> bool:
        k, key = self._k, skeleton(user)
        result = await self._run(
            self._leave,
            [
                k.members(room), k.users(room), k.conns(room, key), k.left(room, session),
                k.names(room),
            ],
            [key, session, int(LEFT_TTL)],
        )
        return bool(result)

    async def expire(self) -> list[tuple[str, str]]:
        flat = await self._run(self._expire, [self._k.presence_rooms], [self._k.prefix])
        return [(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def members(self, room: str) -> list[str]:
        names = await self._run(self._members, [self._k.users(room), self._k.names(room)], [])
        return sorted(text(n) for n in names)

    async def counts(self) -> dict[str, int]:
        flat = await self._run(self._counts, [self._k.presence_rooms], [self._k.prefix])
        return {text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
