"""sqlite:///path: the embedded default. One file, WAL, every write off the event loop.

One writer thread owns the connection. Says that arrive together are committed in one
transaction (group commit) and each is answered only after that commit. Reads run on
the same thread, so they never see a half-written batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import orjson

from chatroom.broker.backend import BackendUnavailable, Draft, Listener, Page, Presence, Stored
from chatroom.broker.local_presence import LocalPresence
from chatroom.core.events import Event, Position, new_epoch, resume_from

__all__ = ["SQLiteBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    head INTEGER NOT NULL,
    -- the greatest timestamp of the room's events: its last activity (ms)
    last INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    session TEXT,
    client_id TEXT,
    PRIMARY KEY (room, offset)
) STRICT, WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_said
    ON events (room, session, client_id) WHERE client_id IS NOT NULL;
"""

# After _SCHEMA and _migrate: a file made before rooms.last existed has it by then.
_INDEXES = """
CREATE INDEX IF NOT EXISTS rooms_last ON rooms (last);
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database made by an older version up to _SCHEMA, in one transaction."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(rooms)")}
    if "last" in columns:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE rooms ADD COLUMN last INTEGER NOT NULL DEFAULT 0")
        # each room's last activity: the stamp of its newest event (one row per room)
        for (name,) in db.execute("SELECT name FROM rooms").fetchall():
            row = db.execute(
                "SELECT data FROM events WHERE room = ? ORDER BY offset DESC LIMIT 1", (name,)
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE rooms SET last = ? WHERE name = ?",
                    (int(orjson.loads(row[0])["timestamp"]), name),
                )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise

# At most this many says are committed in one transaction.
_BATCH = 256


class _Append:
    __slots__ = ("draft", "future", "room")

    def __init__(self, room: str, draft: Draft, future: Future[Stored]) -> None:
        self.room = room
        self.draft = draft
        self.future = future


class SQLiteBackend:
    shared = False

    def __init__(
        self,
        path: str | Path,
        retention: int = 10_000,
        presence_clock: Callable[[], float] | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = f"sqlite:///{self.path}"
        self._retention = retention
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[_Append | Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        # room -> (epoch, head) cached on the writer thread
        self._heads: dict[str, tuple[str, int]] = {}
        self.presence: Presence = LocalPresence(presence_clock)

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="chatroom-sqlite", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def close(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def ping(self) -> None:
        await self._call(lambda: self._conn().execute("SELECT 1").fetchone())

    # --- the writer thread -------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    def _run(self, ready: Future[None]) -> None:
        try:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # It holds session ids: readable by its owner only (SQLite gives its -wal
            # and -shm files the same mode).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a say answered is on disk, even if the machine loses power next.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            _migrate(db)
            db.executescript(_INDEXES)
            for name, epoch, head in db.execute("SELECT name, epoch, head FROM rooms"):
                self._heads[name] = (epoch, head)
            self._db = db
        except Exception as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                if isinstance(job, _Append):
                    batch = [job]
                    stop = False
                    while len(batch) < _BATCH:
                        try:
                            nxt = self._jobs.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(nxt, _Append):
                            batch.append(nxt)
                        else:
                            # keep order: run the batch, then this job
                            self._commit(batch)
                            batch = []
                            if nxt is None:
                                stop = True
                            else:
                                nxt()
                            break
                    if batch:
                        self._commit(batch)
                    if stop:
                        break
                else:
                    job()
        finally:
            db.close()
            self._db = None

    def _commit(self, batch: list[_Append]) -> None:
        db = self._conn()
        results: list[tuple[_Append, Stored]] = []
        heads = dict(self._heads)
        # room -> the greatest timestamp stored by this batch
        lasts: dict[str, int] = {}
        try:
            db.execute("BEGIN IMMEDIATE")
            for job in batch:
                stored = self._insert(db, heads, job.room, job.draft)
                results.append((job, stored))
                if not stored.duplicate:
                    lasts[job.room] = max(lasts.get(job.room, 0), job.draft.timestamp)
            for room in {job.room for job in batch}:
                epoch, head = heads[room]
                db.execute(
                    "INSERT INTO rooms (name, epoch, head, last) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET head = excluded.head, "
                    "last = max(rooms.last, excluded.last)",
                    (room, epoch, head, lasts.get(room, 0)),
                )
                if head > self._retention:
                    db.execute(
                        "DELETE FROM events WHERE room = ? AND offset <= ?",
                        (room, head - self._retention),
                    )
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.error("sqlite: could not commit %d events: %s", len(batch), exc)
            error = BackendUnavailable(f"the database could not store the message: {exc}")
            for job in batch:
                self._resolve(job.future, error)
            return
        self._heads = heads
        fresh: dict[str, list[Event]] = {}
        for job, stored in results:
            if not stored.duplicate:
                fresh.setdefault(job.room, []).append(stored.event)
        assert self._loop is not None
        # Deliver in commit order, on the loop, before answering the says.
        self._loop.call_soon_threadsafe(self._deliver, fresh, results)

    def _insert(
        self, db: sqlite3.Connection, heads: dict[str, tuple[str, int]], room: str, draft: Draft
    ) -> Stored:
        if draft.session and draft.client_id:
            row = db.execute(
                "SELECT data FROM events WHERE room = ? AND session = ? AND client_id = ?",
                (room, draft.session, draft.client_id),
            ).fetchone()
            if row is not None:
                return Stored(Event.decode(row[0]), duplicate=True)
        epoch, head = heads.get(room) or (new_epoch(), 0)
        head += 1
        heads[room] = (epoch, head)
        event = Event.create(
            room, Position(epoch, head), draft.type, draft.user, draft.timestamp, draft.text
        )
        db.execute(
            "INSERT INTO events (room, offset, data, session, client_id) VALUES (?, ?, ?, ?, ?)",
            (room, head, event.data, draft.session, draft.client_id),
        )
        return Stored(event)

    def _deliver(
        self, fresh: dict[str, list[Event]], results: list[tuple[_Append, Stored]]
    ) -> None:
        if self._listener is not None:
            for room, events in fresh.items():
                self._listener(room, events)
        for job, stored in results:
            if not job.future.done():
                job.future.set_result(stored)

    def _resolve(self, future: Future[Stored], error: Exception) -> None:
        if not future.done():
            future.set_exception(error)

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            raise BackendUnavailable("the database is closed")
        future: Future[T] = Future()

        def job() -> None:
            # The caller was cancelled (a client went away): answering a cancelled
            # future raises, which would end the writer thread and hang every say after.
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        self._jobs.put(job)
        return await asyncio.wrap_future(future)

    # --- the protocol ------------------------------------------------------

    async def append(self, room: str, draft: Draft) -> Stored:
        if self._thread is None:
            raise BackendUnavailable("the database is closed")
        future: Future[Stored] = Future()
        self._jobs.put(_Append(room, draft, future))
        return await asyncio.wrap_future(future)

    async def append_many(self, room: str, drafts: Sequence[Draft]) -> list[Stored]:
        if self._thread is None:
            raise BackendUnavailable("the database is closed")
        # queued together, in order: the writer commits them in one group
        futures: list[Future[Stored]] = []
        for draft in drafts:
            future: Future[Stored] = Future()
            self._jobs.put(_Append(room, draft, future))
            futures.append(future)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def _bounds(self, room: str) -> tuple[str | None, int | None, int | None]:
        known = self._heads.get(room)
        if known is None:
            return None, None, None
        epoch, head = known
        row = self._conn().execute(
            "SELECT min(offset) FROM events WHERE room = ?", (room,)
        ).fetchone()
        oldest: int | None = row[0]
        return epoch, oldest, head if oldest is not None else None

    def _read_after(self, room: str, cursor: Position | None, limit: int) -> Page:
        epoch, oldest, head = self._bounds(room)
        if epoch is None or oldest is None or head is None:
            return Page([], cursor is not None, None, None)
        first, last = Position(epoch, oldest), Position(epoch, head)
        if cursor is None:
            rows: list[Any] = self._conn().execute(
                "SELECT data FROM events WHERE room = ? ORDER BY offset DESC LIMIT ?",
                (room, limit),
            ).fetchall()
            rows.reverse()
            return Page([Event.decode(r[0]) for r in rows], False, first, last)
        reset, after = resume_from(cursor, epoch, oldest, head)
        rows = self._conn().execute(
            "SELECT data FROM events WHERE room = ? AND offset > ? ORDER BY offset LIMIT ?",
            (room, after, limit),
        ).fetchall()
        return Page([Event.decode(r[0]) for r in rows], reset, first, last)

    async def read_after(self, room: str, cursor: Position | None, limit: int) -> Page:
        return await self._call(lambda: self._read_after(room, cursor, limit))

    def _read_before(self, room: str, before: Position | None, limit: int) -> list[Event]:
        known = self._heads.get(room)
        if known is None:
            return []
        if before is not None and before.epoch != known[0]:
            return []
        bound = before.offset if before is not None else known[1] + 1
        rows = self._conn().execute(
            "SELECT data FROM events WHERE room = ? AND offset < ? ORDER BY offset DESC LIMIT ?",
            (room, bound, limit),
        ).fetchall()
        return [Event.decode(r[0]) for r in reversed(rows)]

    async def read_before(self, room: str, before: Position | None, limit: int) -> list[Event]:
        return await self._call(lambda: self._read_before(room, before, limit))

    async def rooms(self) -> list[str]:
        return await self._call(lambda: sorted(self._heads))

    def _active_rooms(self, since: int) -> dict[str, int]:
        rows = self._conn().execute(
            "SELECT name, last FROM rooms WHERE last >= ?", (since,)
        ).fetchall()
        return {name: last for name, last in rows}

    async def active_rooms(self, since: int) -> dict[str, int]:
        return await self._call(lambda: self._active_rooms(since))

    def watch(self, room: str) -> None:
        pass

    def unwatch(self, room: str) -> None:
        pass
