"""Pick a backend by URL: sqlite:///path (default), memory://, redis://host:port/db."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from chatroom.broker.backend import Backend

__all__ = ["DEFAULT_BACKEND", "is_shared", "open_backend"]

DEFAULT_BACKEND = "sqlite:///chatroom.db"


def is_shared(url: str) -> bool:
    """Whether processes on several machines can share the backend a URL names."""
    return urlsplit(url).scheme.lower() in ("redis", "rediss")


def open_backend(
    url: str, *, retention: int = 10_000, presence_clock: Callable[[], float] | None = None
) -> Backend:
    """Build (not start) the backend a URL names. Raises ValueError for an unknown one.

    `presence_clock` (seconds) replaces the clock presence expiries are counted on (the
    process's monotonic clock, or Redis's): tests move it instead of sleeping.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from chatroom.broker.memory import MemoryBackend

        return MemoryBackend(retention=retention, presence_clock=presence_clock)
    if scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute/path.db, as SQLAlchemy spells them
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError("sqlite backend needs a path: sqlite:///chatroom.db")
        from chatroom.broker.sqlite import SQLiteBackend

        return SQLiteBackend(path, retention=retention, presence_clock=presence_clock)
    if scheme in ("redis", "rediss"):
        try:
            from chatroom.broker.redis import RedisBackend
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValueError(
                "the redis backend needs redis-py: pip install 'chatroom[redis]'"
            ) from exc
        return RedisBackend(url, retention=retention, presence_clock=presence_clock)
    raise ValueError(
        f"unknown backend {url!r}: use sqlite:///path, memory:// or redis://host:port/db"
    )
