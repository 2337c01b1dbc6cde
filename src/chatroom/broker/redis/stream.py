"""redis://host:port/db: many processes on many machines sharing one Redis.

One stream per room (`chatroom:{room}:stream`); entry ids are `<offset>-0`, so the
stream id is the event's offset. Appending is one Lua script: idempotency check,
offset increment, XADD with an approximate MAXLEN, all atomic per room. The epoch
lives in the room's meta hash: if Redis loses it (a restart without persistence,
FLUSHDB, DEL, eviction under an allkeys-* policy), the next append starts the stream
afresh under a new epoch, and old cursors get a reset.

Each process reads the streams of the rooms it has subscribers in with ONE blocking
XREAD on one connection, and hands what it reads to the broker's listener, its own
appends included: every node delivers in stream order.

A stream started afresh has ids below those of the stream it replaces, so a reader
past them would wait for ever. The append script that starts one also notes it in
`chatroom:fresh-streams` (room, epoch), which the same XREAD reads: a reader whose
position in a room is in an older epoch reads the new stream from its start, and the
broker's subscribers get the new epoch's events, which they answer with a reset.

Presence lives in the same Redis (chatroom.broker.redis.presence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chatroom.broker.backend import Draft, Listener, Page, Presence, Stored
from chatroom.broker.redis.keys import Keys, text, unavailable
from chatroom.broker.redis.presence import RedisPresence
from chatroom.broker.tasks import cancel_requested, stop_tasks
from chatroom.core.events import Event, Position, new_epoch

__all__ = ["RedisBackend"]

log = logging.getLogger(__name__)

# How long a retried say is recognised by its client_id (seconds).
SAID_TTL = 24 * 3600
# Longest a blocking XREAD waits before the reader looks at its room list again (ms).
BLOCK_MS = 2000
# Most entries one XREAD hands back.
READ_COUNT = 1000
# Notes of streams started afresh kept (approximately) for readers to see.
FRESH_KEEP = 10_000

_APPEND = """
-- KEYS: meta, stream, said (or ''), rooms set, activity zset, fresh-streams stream
-- ARGV: room, data tail (the event JSON after its id), retention, fresh epoch, said ttl,
--       the event's timestamp, fresh-streams length kept
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and KEYS[3] ~= '' then
  -- the mark is the stored event's id, '<epoch>-<offset>' (a bare offset if an older
  -- version made it); one that outlived the stream it was made in names nothing now
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local offset = prev
    local dash = string.find(prev, '-', 1, true)
    if dash then
      offset = nil
      if string.sub(prev, 1, dash - 1) == epoch then offset = string.sub(prev, dash + 1) end
    end
    if offset then
      local found = redis.call('XRANGE', KEYS[2], offset .. '-0', offset .. '-0')
      if #found > 0 then return {1, found[1][2][2]} end
    end
  end
end
if not epoch then
  -- a stream started afresh: never continue an old one's offsets under a new epoch
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', 0)
  -- readers past the old stream's ids would never see the new one's: tell them, in the
  -- stream their XREAD reads too (ids from Redis's clock, above those seen before)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'r', ARGV[1], 'e', epoch)
end
local head = redis.call('HINCRBY', KEYS[1], 'head', 1)
local data = '{"id":"' .. epoch .. '-' .. head .. '",' .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], head .. '-0', 'd', data)
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], epoch .. '-' .. head, 'EX', ARGV[5]) end
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], 'GT', ARGV[6], ARGV[1])
return {0, data}
"""

_READ = """
-- KEYS: meta, stream
-- ARGV: mode ('last' | 'after' | 'before'), limit, cursor epoch, cursor offset, retention
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'head')
local epoch, head = meta[1], tonumber(meta[2])
if not epoch then return {'', 0, 0, 0, {}} end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first == 0 then return {epoch, 0, 0, 0, {}} end
local oldest = tonumber(string.match(first[1][1], '^(%d+)'))
-- XADD trims approximately (whole nodes, cheaply); what is retained is exactly the
-- newest `retention` events, and the few older ones still stored are never served.
local floor = head - tonumber(ARGV[5]) + 1
if oldest < floor then oldest = floor end
local low = oldest .. '-0'
local mode, limit = ARGV[1], tonumber(ARGV[2])
local out = {}
local reset = 0
local after = 0
if mode == 'after' then
  local offset = tonumber(ARGV[4])
  after = offset
  if ARGV[3] ~= epoch or offset < oldest - 1 or offset > head then
    reset = 1
    after = oldest - 1
  end
end
if limit <= 0 then
  -- only the bounds (and whether the cursor holds) were asked for
elseif mode == 'last' then
  local entries = redis.call('XREVRANGE', KEYS[2], '+', low, 'COUNT', limit)
  for i = #entries, 1, -1 do out[#out + 1] = entries[i][2][2] end
elseif mode == 'after' then
  local entries = redis.call('XRANGE', KEYS[2], '(' .. after .. '-0', '+', 'COUNT', limit)
  for i = 1, #entries do out[#out + 1] = entries[i][2][2] end
else
  if ARGV[3] ~= '' and ARGV[3] ~= epoch then return {epoch, 0, oldest, head, {}} end
  local top = '+'
  if ARGV[3] ~= '' then top = '(' .. ARGV[4] .. '-0' end
  local entries = redis.call('XREVRANGE', KEYS[2], top, low, 'COUNT', limit)
  for i = #entries, 1, -1 do out[#out + 1] = entries[i][2][2] end
end
return {epoch, reset, oldest, head, out}
"""


class RedisBackend:
    shared = True

    def __init__(
        self,
        url: str,
        retention: int = 10_000,
        prefix: str = "chatroom:",
        presence_clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = url
        self._url = url
        self._retention = retention
        self._keys = Keys(prefix)
        # No silent retries: a say re-sent after a lost reply could be stored twice.
        options: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
        }
        # A bounded pool that waits for a free connection: a burst of clients
        # queues briefly instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=5.0, **options
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._reader = aioredis.Redis.from_url(
            url, single_connection_client=True, **options
        )
        self._append = self._redis.register_script(_APPEND)
        self._read = self._redis.register_script(_READ)
        self.presence: Presence = RedisPresence(self._redis, self._keys, presence_clock)
        self._listener: Listener | None = None
        # rooms this process watches -> the stream id read up to (once in the XREAD)
        self._watched: dict[str, str] = {}
        # per watched room not yet in the XREAD, what the reads since it was watched saw:
        # (epoch, lowest head); ("", 0) when they saw no stream, or streams of two epochs
        self._start: dict[str, tuple[str, int]] = {}
        # per room in the XREAD whose id is past "0-0": the epoch of the stream it is in
        # (at "0-0" a room is read from the start of whatever stream it has)
        self._epochs: dict[str, str] = {}
        # rooms in the XREAD
        self._active: set[str] = set()
        # reads in flight of rooms not yet in the XREAD
        self._inflight: Counter[str] = Counter()
        # the id read up to in the fresh-streams stream; None until first taken
        self._fresh_at: str | None = None
        self._changed = asyncio.Event()
        self._reader_id: int | None = None
        self._unblocking: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._down = False

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    async def start(self) -> None:
        try:
            await self._redis.ping()
            await self._fill_activity()
        except (RedisError, OSError) as exc:
            # Start anyway: /readyz says unready and the reader keeps trying.
            log.warning("redis %s is unreachable at start: %s", self.name, exc)
        self._task = asyncio.create_task(self._read_loop(), name="chatroom-redis-reader")

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None
        await self._reader.aclose()
        # The pool was handed in, so aclose() alone would leave its connections open.
        await self._redis.aclose(close_connection_pool=True)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    # --- writing ---------------------------------------------------------------

    def _append_call(self, room: str, draft: Draft) -> tuple[list[str], list[Any]]:
        """The keys and args of the append script for one draft."""
        k = self._keys
        wire: dict[str, Any] = {"room": room, "type": draft.type, "user": draft.user}
        if draft.text is not None:
            wire["text"] = draft.text
        wire["timestamp"] = draft.timestamp
        tail = orjson.dumps(wire)[1:]
        said = (
            k.said(room, draft.session, draft.client_id)
            if draft.session and draft.client_id
            else ""
        )
        keys = [k.meta(room), k.stream(room), said, k.rooms, k.activity, k.fresh]
        args = [room, tail, self._retention, new_epoch(), SAID_TTL, draft.timestamp, FRESH_KEEP]
        return keys, args

    async def append(self, room: str, draft: Draft) -> Stored:
        keys, args = self._append_call(room, draft)
        try:
            duplicate, data = await self._append(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return Stored(Event.decode(bytes(data)), duplicate=bool(duplicate))

    async def append_many(self, room: str, drafts: Sequence[Draft]) -> list[Stored]:
        if len(drafts) < 2:
            return [await self.append(room, draft) for draft in drafts]
        # One pipeline on one connection: Redis runs the scripts in this order, in one
        # round trip (separate pooled connections could reach it out of order).
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for draft in drafts:
                    keys, args = self._append_call(room, draft)
                    await self._append(keys=keys, args=args, client=pipe)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return [
            Stored(Event.decode(bytes(data)), duplicate=bool(duplicate))
            for duplicate, data in results
        ]

    # --- reading ---------------------------------------------------------------

    async def _query(self, room: str, args: list[Any]) -> tuple[str, bool, int, int, list[Event]]:
        k = self._keys
        try:
            epoch, reset, oldest, head, rows = await self._read(
                keys=[k.meta(room), k.stream(room)], args=args
            )
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return text(epoch), bool(reset), int(oldest), int(head), [
            Event.decode(bytes(r)) for r in rows
        ]

    async def read_after(self, room: str, cursor: Position | None, limit: int) -> Page:
        if cursor is None:
            args: list[Any] = ["last", limit, "", 0, self._retention]
        else:
            args = ["after", limit, cursor.epoch, cursor.offset, self._retention]
        # A read of a room not yet in the XREAD decides where XREAD must start: every
        # event after the head this read saw has to reach the listener.
        track = room in self._watched and room not in self._active
        if track:
            self._inflight[room] += 1
        try:
            epoch, reset, oldest, head, events = await self._query(room, args)
        finally:
            if track:
                self._inflight[room] -= 1
                if not self._inflight[room]:
                    del self._inflight[room]
                    self._wake_reader()
        if track and room in self._watched:
            seen = self._start.get(room)
            if seen is None or (seen[0] == epoch and head < seen[1]):
                self._start[room] = (epoch, head)
            elif seen[0] != epoch:
                # reads on both sides of a fresh start: the XREAD reads the stream the
                # room has then from its start
                self._start[room] = ("", 0)
        if not epoch or not oldest:
            return Page([], cursor is not None, None, None)
        return Page(events, reset, Position(epoch, oldest), Position(epoch, head))

    async def read_before(self, room: str, before: Position | None, limit: int) -> list[Event]:
        args = [
            "before", limit, before.epoch if before else "", before.offset if before else 0,
            self._retention,
        ]
        _, _, _, _, events = await self._query(room, args)
        return events

    async def rooms(self) -> list[str]:
        try:
            names = await self._redis.smembers(self._keys.rooms)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return sorted(text(n) for n in names)

    async def active_rooms(self, since: int) -> dict[str, int]:
        try:
            found: list[Any] = await self._redis.zrangebyscore(
                self._keys.activity, since, "+inf", withscores=True
            )
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return {text(room): int(score) for room, score in found}

    async def _fill_activity(self) -> None:
        """Once per database: enter the rooms stored before `activity` existed in it, each
        with its newest event's timestamp. Appends meanwhile only raise a room's (GT)."""
        k = self._keys
        if await self._redis.exists(k.activity_filled):
            return
        entered: list[Any] = await self._redis.zrange(k.activity, 0, -1)
        known = {text(r) for r in entered}
        for raw in await self._redis.smembers(k.rooms):
            room = text(raw)
            if room in known:
                continue
            newest: Any = await self._redis.xrevrange(k.stream(room), count=1)
            if newest:
                stamp = int(orjson.loads(newest[0][1][b"d"])["timestamp"])
                await self._redis.zadd(k.activity, {room: stamp}, gt=True)
        await self._redis.set(k.activity_filled, 1)

    # --- the one XREAD per process ----------------------------------------------

    def watch(self, room: str) -> None:
        if room not in self._watched:
            self._watched[room] = ""
            self._wake_reader()

    def unwatch(self, room: str) -> None:
        if self._watched.pop(room, None) is not None:
            self._start.pop(room, None)
            self._epochs.pop(room, None)
            self._active.discard(room)
            self._wake_reader()

    def _wake_reader(self) -> None:
        self._changed.set()
        if self._reader_id is not None:
            # Interrupt the blocking XREAD so it picks up the new room list now.
            task = asyncio.ensure_future(self._unblock(self._reader_id))
            self._unblocking.add(task)
            task.add_done_callback(self._unblocking.discard)

    async def _unblock(self, client_id: int) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.client_unblock(client_id)

    async def _refresh_starts(self) -> None:
        """Put each newly watched room in the XREAD, at the stream id it starts after.

        That is the lowest head any read of the room saw before it joined the XREAD, so
        nothing a subscriber did not read is skipped; a room nobody has read yet starts
        at the current head. A room with a read still in flight waits for it. The reads'
        epoch is checked against the room's epoch now: a stream started afresh since
        they saw it (or gone) is read from its start. Streams started afresh after that
        check reach the reader as notes in the fresh-streams stream, which the XREAD
        reads on after an id taken before the check.
        """
        k = self._keys
        self._active &= set(self._watched)
        pending = [
            room for room in self._watched
            if room not in self._active and not self._inflight.get(room)
        ]
        if not pending:
            return
        seen = {room: self._start.get(room) for room in pending}
        # With no room in the XREAD, no note read so far matters: start from the newest.
        sync = self._fresh_at is None or not self._active
        async with self._redis.pipeline(transaction=False) as pipe:
            if sync:
                pipe.xrevrange(k.fresh, count=1)
            for room in pending:
                pipe.hmget(k.meta(room), ["epoch", "head"])
            answers: list[Any] = await pipe.execute()
        if sync:
            newest = answers.pop(0)
            self._fresh_at = text(newest[0][0]) if newest else "0-0"
        for room, (raw_epoch, raw_head) in zip(pending, answers, strict=True):
            if (
                room not in self._watched
                or room in self._active
                or self._inflight.get(room)
                or self._start.get(room) != seen[room]
            ):
                continue  # a read began or ended meanwhile: decide on the next pass
            epoch = "" if raw_epoch is None else text(raw_epoch)
            mark = self._start.pop(room, None)
            if mark is None:
                at = int(raw_head or 0)
            elif mark[0] == epoch:
                at = mark[1]
            else:
                at = 0
            self._watched[room] = f"{at}-0"
            if at:
                self._epochs[room] = epoch
            else:
                self._epochs.pop(room, None)
            self._active.add(room)

    async def _resync(self) -> None:
        """After Redis came back: take the fresh-streams id anew (a restarted Redis has a
        stream of its own, whose ids may be below those read before), and read from its
        start each room in the XREAD whose stream was started afresh meanwhile, or is
        gone (the next append starts it afresh at offset 1, below the id read up to).
        Rooms not in the XREAD yet are checked as they join it.
        """
        k = self._keys
        rooms = [room for room in self._active if room in self._epochs]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(k.fresh, count=1)
            for room in rooms:
                pipe.hget(k.meta(room), "epoch")
            newest, *epochs = await pipe.execute()
        self._fresh_at = text(newest[0][0]) if newest else "0-0"
        for room, raw in zip(rooms, epochs, strict=True):
            held = self._epochs.get(room)
            if room in self._active and held is not None and (raw is None or text(raw) != held):
                self._watched[room] = "0-0"
                del self._epochs[room]

    async def _read_loop(self) -> None:
        delay = 0.1
        while not cancel_requested():
            try:
                if self._down:
                    await self._redis.ping()
                    await self._resync()
                    log.warning("redis %s is reachable again: resuming reads", self.name)
                    self._down = False
                    delay = 0.1
                self._changed.clear()
                await self._refresh_starts()
                if not self._active:
                    # nothing to read yet (no room, or only rooms with reads in flight)
                    await self._changed.wait()
                    continue
                if self._reader_id is None:
                    self._reader_id = int(await self._reader.client_id())
                asked = {room: self._watched[room] for room in self._active}
                streams: dict[Any, Any] = {self._keys.stream(r): at for r, at in asked.items()}
                streams[self._keys.fresh] = self._fresh_at or "0-0"
                if self._changed.is_set():
                    continue
                reply = await self._reader.xread(streams, count=READ_COUNT, block=BLOCK_MS)
                self._dispatch(reply, asked)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc  # redis-py turned it into this
                self._reader_id = None
                if not self._down:
                    log.warning("redis %s: reading streams failed, retrying: %s", self.name, exc)
                    self._down = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dispatch(self, reply: Any, asked: dict[str, str]) -> None:
        """Hand what one XREAD read to the listener. `asked`: the id it read each room
        after; a room whose id changed since (unwatched, watched again, or moved to the
        start of a new stream below) takes nothing from this reply: it reads again."""
        if not reply:
            return
        items = reply.items() if isinstance(reply, dict) else reply
        fresh = self._keys.fresh
        prefix_len = len(self._keys.prefix) + 1
        read: list[tuple[str, Any]] = []
        for key, entries in items:
            if not entries:
                continue
            name = text(key)
            if name != fresh:
                read.append((name[prefix_len : name.rindex("}:")], entries))
                continue
            self._fresh_at = text(entries[-1][0])
            # one XREAD sees a fresh start's note and its first entries together: the
            # notes first, so that no room takes entries of a stream it is not at the
            # start of
            newest = {text(fields[b"r"]): text(fields[b"e"]) for _, fields in entries}
            for room, epoch in newest.items():
                held = self._epochs.get(room)
                if (
                    held is not None
                    and held != epoch
                    and room in self._active
                    and self._watched[room] == asked.get(room)
                ):
                    # its id is in a stream since replaced: read the new one from its start
                    self._watched[room] = "0-0"
                    del self._epochs[room]
        for room, entries in read:
            if room not in self._active or self._watched[room] != asked.get(room):
                continue
            events = [Event.decode(bytes(fields[b"d"])) for _, fields in entries]
            held = self._epochs.get(room)
            if held is not None and (
                events[0].position.epoch != held or events[-1].position.epoch != held
            ):
                # A stream started afresh grew past this room's id without its note
                # being read (a note lost with the fresh-streams stream): its start
                # is missing here, so read it from there.
                self._watched[room] = "0-0"
                del self._epochs[room]
                continue
            self._watched[room] = text(entries[-1][0])
            self._epochs[room] = events[-1].position.epoch
            if self._listener is not None:
                self._listener(room, events)
