"""Peer servers for `chatroom bench --compare`: the same load on other WebSocket servers.

Each peer is a small broadcast server (bench.peers): every text message any
client sends goes to every connected client. run_peer() runs it exactly as
run_chatroom() runs chatroom (same client processes, same open-loop publisher, same
/proc accounting), so chatroom's figures can be read as ratios to the peers'.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatroom.bench.run import Load, Result, Target, free_port, measure

__all__ = [
    "NODE_WS_DIR",
    "PEERS",
    "Peer",
    "PeerSetupError",
    "run_peer",
    "start_peer",
]

HOST = "127.0.0.1"
NODE_WS_DIR = Path(__file__).resolve().parent / "peers" / "node_ws"
# the repository's root, where `bench` is a package
_ROOT = Path(__file__).resolve().parent.parent


class PeerSetupError(RuntimeError):
    """A peer cannot run here (a missing tool, a failed install)."""


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Peer:
    name: str
    description: str
    # the command that starts it listening on 127.0.0.1:port
    argv: Callable[[int], list[str]]
    # the path WebSocket clients connect to
    path: str = "/"
    # how the publisher frames each message (see run._publish): "text", "json", "socketio"
    frame_kind: str = "text"
    # wire.open_client technique for subscribers and publisher: "websocket" or "socketio"
    client_technique: str = "websocket"
    # makes it runnable (installs what it needs); raises PeerSetupError if it cannot
    setup: Callable[[], None] = _nothing


def _python(module: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", f"bench.peers.{module}", "--port", str(port)]

    return argv


def _node_ws_argv(port: int) -> list[str]:
    return [shutil.which("node") or "node", str(NODE_WS_DIR / "server.js"), "--port", str(port)]


def node_ws_setup() -> None:
    """`npm ci` in peers/node_ws when its node_modules is missing or older than the lock."""
    if shutil.which("node") is None:
        raise PeerSetupError(
            "peer node-ws needs Node.js: no `node` on PATH (e.g. apt-get install nodejs npm)"
        )
    installed = NODE_WS_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_WS_DIR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PeerSetupError(
            f"peer node-ws needs npm to install its packages in {NODE_WS_DIR}: no `npm` on PATH"
        )
    try:
        run = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_WS_DIR, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=300, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerSetupError(f"`npm ci` in {NODE_WS_DIR} took over 300 s") from exc
    if run.returncode != 0:
        raise PeerSetupError(
            f"`npm ci` in {NODE_WS_DIR} failed ({run.returncode}):\n{run.stdout}{run.stderr}"
        )


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in [
        Peer(
            "floor",
            "raw asyncio Protocol on uvloop: one pre-encoded frame written per client",
            _python("floor"),
        ),
        Peer(
            "aiohttp-naive",
            "aiohttp on uvloop: await ws.send_str() to each client in a loop",
            _python("aiohttp_naive"),
        ),
        Peer(
            "websockets",
            "websockets (asyncio implementation) on uvloop: websockets.broadcast()",
            _python("websockets_broadcast"),
        ),
        Peer(
            "socketio",
            "python-socketio AsyncServer (aiohttp, uvloop): emit to room 'bench'",
            _python("socketio_room"),
            path="/socket.io/?EIO=4&transport=websocket",
            frame_kind="socketio",
            client_technique="socketio",
        ),
        Peer(
            "node-ws",
            "Node.js + ws: for (const c of wss.clients) c.send(data)",
            _node_ws_argv,
            setup=node_ws_setup,
        ),
    ]
}


# --- the peer process ---------------------------------------------------------------


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    """Until 127.0.0.1:port accepts a connection (peers have no /readyz)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited ({proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"peer did not listen on {HOST}:{port} within {timeout} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_peer(peer: Peer, port: int) -> subprocess.Popen[bytes]:
    """Start the peer on 127.0.0.1:port and return once it accepts connections."""
    # the peers are modules of this folder: run them from the repository's root
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )}
    proc = subprocess.Popen(peer.argv(port), stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_listening(proc, port)
    except BaseException:
        _stop(proc)
        raise
    return proc


# --- one run -----------------------------------------------------------------------------


async def run_peer(load: Load, name: str, command: str = "") -> Result:
    """Start peer `name`, run the load as run_chatroom does, stop it; the figures."""
    try:
        peer = PEERS[name]
    except KeyError:
        raise ValueError(f"no peer {name!r}; peers: {', '.join(PEERS)}") from None
    if load.technique != "websocket":
        raise ValueError(f"peers speak WebSocket only, not {load.technique!r}")
    await asyncio.to_thread(peer.setup)
    port = free_port()
    proc = await asyncio.to_thread(start_peer, peer, port)
    try:
        # subscribers speak the peer's protocol; the result still says "websocket"
        target = Target(
            pid=proc.pid, port=port, sub_path=peer.path, pub_path=peer.path,
            sub_technique=peer.client_technique, frame_kind=peer.frame_kind, host=HOST,
        )
        result = await measure(load, target, name, command)
    finally:
        await asyncio.to_thread(_stop, proc)
    result.extra.update(peer=peer.description, exit_code=proc.returncode)
    return result
