"""chatroom's WebSocket as an Autobahn|Testsuite testee: the real server, echoing.

Autobahn's fuzzingclient expects an echo server. Everything a frame goes through here is
chatroom's own: aiohttp's upgrade and the route's checks (Origin, the signed session
cookie), `_Socket` (reading, pongs, the close handshake and its timeout, half-close on a
violation), `core.websocket` (FrameParser, close frames) and the shipped limits (16 KiB
messages, text only). Two things above the protocol are swapped, so that what comes back
is what Autobahn sent and nothing else:

- each text message is answered with itself (as `_parse` answers an error frame) instead
  of being stored and broadcast as an event;
- the socket subscribes to a room nobody speaks in, so no history comes first.

    python docs/autobahn/testee.py PORT COOKIE_FILE

serves on 127.0.0.1:PORT, logs in through /demo like a browser, writes the session cookie
(name=value) to COOKIE_FILE, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

import chatroom.transports.websocket as transport
from chatroom.app import create_app
from chatroom.broker import Broker
from chatroom.config import Settings
from chatroom.web.security import COOKIE

QUIET_ROOM = "autobahn-quiet"


def echo(chat: Any, session: Any, raw: str) -> str:
    return raw


async def serve(port: int, cookie_file: Path) -> None:
    transport._parse = echo
    subscribe = Broker.subscribe

    def quiet(self: Broker, room: str, *args: Any, **kwargs: Any) -> Any:
        return subscribe(self, QUIET_ROOM, *args, **kwargs)

    Broker.subscribe = quiet  # type: ignore[method-assign]

    settings = Settings(host="127.0.0.1", port=port, backend="memory://")
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        params = {"user": "autobahn", "room": "lobby", "demo": "websocket"}
        async with client.get(f"{base}/demo", params=params) as response:
            assert response.status == 200, response.status
        morsel = client.cookie_jar.filter_cookies(URL(base)).get(COOKIE)
        assert morsel is not None
    cookie_file.write_text(f"{COOKIE}={morsel.value}")  # noqa: ASYNC240 (once, at start)
    print(f"testee on {base}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2])))
