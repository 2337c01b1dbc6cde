"""The SQLite file holds session ids: only its owner may read it."""

from __future__ import annotations

import stat
from pathlib import Path

from chatroom.broker.backend import Draft
from chatroom.broker.sqlite import SQLiteBackend


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
