"""What only the SQLite backend has: a file, durable, private, that survives restarts
and SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import stat
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

from chatroom.broker.backend import Draft
from chatroom.broker.sqlite import SQLiteBackend
from chatroom.core.events import Position, parse_cursor
from tests.broker.conftest import Backends
from tests.broker.helpers import ROOM, TS, fill, msg, offsets


def _row(path: Any, offset: int) -> bytes | None:
    with closing(sqlite3.connect(path)) as other:
        row = other.execute(
            "SELECT data FROM events WHERE room = ? AND offset = ?", (ROOM, offset)
        ).fetchone()
    return None if row is None else bytes(row[0])


async def test_sqlite_append_answers_only_once_committed(sqlite: Backends) -> None:
    backend = await sqlite.start()
    seen: list[int] = []

    async def say(i: int) -> None:
        stored = await backend.append(ROOM, msg(f"m{i}"))
        # no await between the answer and this look through another connection
        assert _row(sqlite.path, stored.event.offset) == stored.event.data
        seen.append(stored.event.offset)

    await asyncio.gather(*(say(i) for i in range(40)))
    assert sorted(seen) == list(range(1, 41))


async def test_sqlite_history_and_ids_survive_close_and_reopen(sqlite: Backends) -> None:
    first = await sqlite.start()
    events = await fill(first, 5)
    said = await first.append(ROOM, msg("once", session="s1", client_id="c1"))
    await first.close()

    again = await sqlite.start()
    page = await again.read_after(ROOM, None, 100)
    assert page.events == [*events, said.event]
    assert [e.data for e in page.events] == [e.data for e in [*events, said.event]]
    # the epoch survived: an old cursor resumes, no reset
    resumed = await again.read_after(ROOM, events[2].position, 100)
    assert not resumed.reset
    assert resumed.events == [*events[3:], said.event]
    # ids keep increasing from where they were
    nxt = await again.append(ROOM, msg("after restart"))
    assert nxt.event.position == Position(events[0].position.epoch, 7)
    # and a retry after the restart is still recognised
    retry = await again.append(ROOM, msg("once", session="s1", client_id="c1"))
    assert retry.duplicate
    assert retry.event == said.event
    assert await again.rooms() == [ROOM]
    assert await again.active_rooms(TS) == {ROOM: TS}


async def test_sqlite_a_file_from_before_rooms_last_activity_is_brought_up(
    sqlite: Backends,
) -> None:
    first = await sqlite.start()
    await first.append("a", Draft("message", "alice", 1_000, "old"))
    await first.append("a", Draft("message", "alice", 2_000, "newest"))
    await first.append("b", Draft("join", "bob", 3_000))
    await first.close()
    assert sqlite.path is not None
    # what an older version made: no rooms.last, no index on it
    with closing(sqlite3.connect(sqlite.path)) as db:
        db.execute("DROP INDEX rooms_last")
        db.execute("ALTER TABLE rooms DROP COLUMN last")
        db.commit()

    again = await sqlite.start()
    assert await again.active_rooms(0) == {"a": 2_000, "b": 3_000}
    await again.append("a", Draft("message", "alice", 5_000, "after"))
    assert await again.active_rooms(4_000) == {"a": 5_000}
    await again.close()
    with closing(sqlite3.connect(sqlite.path)) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT name, last FROM rooms WHERE last >= ?", (0,)
        ).fetchall()
    assert "rooms_last" in str(plan)


async def test_sqlite_a_new_database_is_a_new_epoch(sqlite: Backends) -> None:
    first = await sqlite.start()
    old = await fill(first, 3)
    await first.close()
    assert sqlite.path is not None
    for leftover in sqlite.path.parent.glob(sqlite.path.name + "*"):
        leftover.unlink()

    fresh = await sqlite.start()
    new = (await fresh.append(ROOM, msg("hello again"))).event
    assert new.offset == 1
    assert new.position.epoch != old[0].position.epoch
    page = await fresh.read_after(ROOM, old[-1].position, 100)
    assert page.reset
    assert page.events == [new]


CHILD = textwrap.dedent(
    """
    import asyncio
    import sys

    from chatroom.broker import open_backend
    from chatroom.broker.backend import Draft

    async def main() -> None:
        backend = open_backend(sys.argv[1])
        await backend.start()
        n = 0
        while True:
            n += 1
            stored = await backend.append("lobby", Draft("message", "kid", 1, f"m{n}"))
            print(stored.event.id, flush=True)

    asyncio.run(main())
    """
)


async def test_sqlite_says_answered_survive_sigkill(sqlite: Backends) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, sqlite.url, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        while len(acked) < 20:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
            assert line, "the child stopped before it appended"
            acked.append(line.decode().strip())
    finally:
        proc.kill()  # SIGKILL, while it keeps appending
        out, _ = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    acked += out.decode().split()  # answered before the kill, read after it

    backend = await sqlite.start()
    page = await backend.read_after(ROOM, None, 100_000)
    ids = [e.id for e in page.events]
    assert set(acked) <= set(ids), "a say that was answered is missing after SIGKILL"
    assert offsets(page.events) == list(range(1, len(ids) + 1))
    after = await backend.append(ROOM, msg("after the crash"))
    newest_acked = max(p for p in map(parse_cursor, acked) if p is not None)
    assert after.event.position > newest_acked
    assert after.event.offset == len(ids) + 1


async def test_the_database_and_its_journal_are_private(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "chat.db")
    await backend.start()
    try:
        await backend.append("lobby", Draft("message", "alice", 1, "hi", "sid-1"))
        modes = _modes(tmp_path)
        assert "chat.db" in modes
        assert modes == dict.fromkeys(modes, 0o600)
    finally:
        await backend.close()


def _modes(folder: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in folder.iterdir()
        if p.name.startswith("chat.db")
    }
