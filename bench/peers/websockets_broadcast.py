"""The `websockets` library (new asyncio implementation) with websockets.broadcast().

Any path upgrades. Run as `python -m bench.peers.websockets_broadcast --port P`.
"""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosedError

from bench.peers import HOST, run, wait_for_sigterm

__all__ = ["main"]


async def _serve(port: int) -> None:
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for message in ws:
                if isinstance(message, str):
                    broadcast(clients, message)
        except ConnectionClosedError:
            pass  # the client went without a close frame: nothing to tell anyone
        finally:
            clients.discard(ws)

    async with serve(handler, HOST, port, backlog=1024) as server:
        await wait_for_sigterm()
        server.close()  # closes every connection with 1001 going away
        await server.wait_closed()


def main() -> None:
    run(_serve, "websockets WebSocket broadcast: websockets.broadcast(clients, message)")


if __name__ == "__main__":
    main()
