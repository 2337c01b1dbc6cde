from __future__ import annotations

import aiohttp

from tests.support import Server, login


async def test_welcome_page_and_demo_login(server: Server, client: aiohttp.ClientSession) -> None:
    async with client.get(server.url + "/") as response:
        assert response.status == 200
        assert "Nickname" in await response.text()
    result = await login(client, server, "alice", demo="websocket")
    assert 'data-user="alice"' in result.page
