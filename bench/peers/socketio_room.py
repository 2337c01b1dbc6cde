"""python-socketio (AsyncServer on aiohttp, uvloop): every client joins room "bench";
each "message" event is re-emitted to the room with sio.emit("message", data, room="bench").

Clients connect WebSocket-only at /socket.io/?EIO=4&transport=websocket (no polling,
so the server offers no other transport). Run as
`python -m bench.peers.socketio_room --port P`.
"""

from __future__ import annotations

from typing import Any

import socketio  # type: ignore[import-untyped]
from aiohttp import web

from bench.peers import HOST, run, wait_for_sigterm

__all__ = ["ROOM", "main", "make_app"]

ROOM = "bench"


def make_app() -> tuple[web.Application, Any]:
    sio = socketio.AsyncServer(
        async_mode="aiohttp", transports=["websocket"], logger=False, engineio_logger=False
    )
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, ROOM)

    @sio.on("message")  # type: ignore[untyped-decorator]
    async def message(sid: str, data: Any) -> None:
        await sio.emit("message", data, room=ROOM)

    return app, sio


async def serve(port: int) -> None:
    app, sio = make_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=1024).start()
    try:
        await wait_for_sigterm()
    finally:
        await sio.shutdown()
        if sio.eio.sockets:  # close every Engine.IO connection, so no handler lingers
            await sio.eio.disconnect()
        await runner.cleanup()


def main() -> None:
    run(serve, "python-socketio broadcast: sio.emit('message', data, room='bench')")


if __name__ == "__main__":
    main()
