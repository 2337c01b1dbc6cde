"""aiohttp, the naive way: each received text message is sent to every client in a loop.

    for client in clients: await client.send_str(msg.data)

as the aiohttp docs' chat examples do. Any path upgrades. Run as
`python -m bench.peers.aiohttp_naive --port P`.
"""

from __future__ import annotations

from aiohttp import WSCloseCode, WSMsgType, web

from bench.peers import HOST, run, wait_for_sigterm

__all__ = ["main", "make_app"]

_CLIENTS = web.AppKey("clients", set[web.WebSocketResponse])


async def _socket(request: web.Request) -> web.WebSocketResponse:
    clients = request.app[_CLIENTS]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    clients.add(ws)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            for client in list(clients):
                try:
                    await client.send_str(msg.data)
                except ConnectionError:
                    clients.discard(client)
    finally:
        clients.discard(ws)
    return ws


async def _close_all(app: web.Application) -> None:
    clients = app[_CLIENTS]
    for ws in list(clients):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def make_app() -> web.Application:
    app = web.Application()
    app[_CLIENTS] = set()
    app.router.add_get("/{tail:.*}", _socket)
    app.on_shutdown.append(_close_all)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=1024).start()
    try:
        await wait_for_sigterm()
    finally:
        await runner.cleanup()


def main() -> None:
    run(serve, "aiohttp WebSocket broadcast: await send_str() to each client in turn")


if __name__ == "__main__":
    main()
