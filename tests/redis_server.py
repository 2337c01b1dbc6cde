"""A real redis-server for the tests: the one on 127.0.0.1:6379 if it answers, else our own.

Set CHATROOM_TEST_REDIS=redis://host:port to use another. The tests never skip for
want of Redis: if none answers and none can be started, they fail and say why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RedisServer", "free_port", "reachable", "start_redis"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    host: str
    port: int
    # set when the tests started this server themselves
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    # an append-only file fsynced on every write: a restart (even after SIGKILL) keeps
    # everything Redis acknowledged
    persistent: bool = False

    def url(self, db: int = 15) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def stop(self) -> None:
        """Stop a server the tests started (never the machine's own)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL a server the tests started: no goodbye, no last save."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Start a stopped server again on the same port, in the same directory.

        Without persistence its data is gone; with it, it reloads its append-only file.
        """
        assert self.workdir is not None
        self.process = _spawn(self.port, self.workdir, self.persistent)

    def cleanup(self) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(port: int, workdir: Path, persistent: bool = False) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "no Redis answers on 127.0.0.1:6379 and redis-server is not installed: "
            "run scripts/test (it installs it) or apt-get install redis-server"
        )
    proc = subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(workdir),
            *(["--appendonly", "yes", "--appendfsync", "always"] if persistent
              else ["--appendonly", "no"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not reachable("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return proc


def start_redis(own: bool = False, persistent: bool = False) -> RedisServer:
    """The shared server for most tests, or (own=True) a private one a test may stop.

    persistent=True (a private one only): appendonly, fsynced on every write.
    """
    assert own or not persistent, "only a private server may be made persistent"
    configured = os.environ.get("CHATROOM_TEST_REDIS")
    if configured and not own:
        host, _, given = configured.removeprefix("redis://").split("/")[0].partition(":")
        return RedisServer(host or "127.0.0.1", int(given or 6379))
    if not own and reachable("127.0.0.1", 6379):
        return RedisServer("127.0.0.1", 6379)
    free = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="chatroom-redis-"))
    return RedisServer("127.0.0.1", free, _spawn(free, workdir, persistent), workdir, persistent)
