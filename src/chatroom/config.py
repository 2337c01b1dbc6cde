"""Settings: one frozen object built from flags and CHATROOM_* environment variables."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from chatroom.broker.registry import DEFAULT_BACKEND

__all__ = ["Settings", "load_secret"]


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9000
    backend: str = DEFAULT_BACKEND
    # signs session cookies; every node of one chat must share it
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # events kept per room
    retention: int = 10_000
    # events a subscriber may have waiting before it is cut off as too slow
    max_pending: int = 1024
    # bytes a streaming client may have unsent in this process (past the kernel's
    # socket buffer) before it is cut off as too slow
    max_unsent: int = 1 << 20
    # messages a second per session, and how many may be said at once
    rate: float = 5.0
    burst: float = 10.0
    # largest request body and WebSocket message, in bytes
    max_body: int = 16 * 1024
    longpoll_timeout: float = 25.0
    sse_heartbeat: float = 15.0
    # WebSockets are pinged this often; one that answered nothing since the last ping
    # is dropped
    ws_heartbeat: float = 20.0
    presence_ttl: float = 30.0
    # extra origins allowed to open WebSockets and POST (besides the page's own)
    allowed_origins: tuple[str, ...] = ()
    # set the Secure flag on the session cookie (behind HTTPS)
    secure_cookies: bool = False


def load_secret(value: str | None, path: str | None) -> bytes:
    """The cookie secret: given outright, else read from (or first written to) a file."""
    if value:
        return value.encode()
    if not path:
        return secrets.token_bytes(32)
    file = Path(path)
    if file.exists():
        return file.read_bytes().strip()
    token = secrets.token_hex(32).encode()
    file.touch(mode=0o600)
    file.write_bytes(token)
    return token
