"""Reading a Server-Sent Events stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

__all__ = [
    "SSEEvent",
    "SSEStream",
]


@dataclass
class SSEEvent:
    id: str | None
    event: str | None
    data: str
    comments: list[str]

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.data)
        return data


class SSEStream:
    """Parses a text/event-stream response block by block."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        # comment lines seen in blocks that carried no data
        self.comments: list[str] = []
        self.retry: int | None = None

    async def next(self, within: float = 5.0) -> SSEEvent | None:
        """The next block with data; None at the end of the stream."""
        async with asyncio.timeout(within):
            while True:
                block = await self._block()
                if block is None:
                    return None
                if block.data or block.event:
                    return block
                self.comments.extend(block.comments)

    async def _block(self) -> SSEEvent | None:
        event = SSEEvent(None, None, "", [])
        data: list[str] = []
        seen = False
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return event if seen else None
            line = raw.decode().rstrip("\n")
            if line == "":
                if seen:
                    event.data = "\n".join(data)
                    return event
                continue
            seen = True
            if line.startswith(":"):
                event.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event.id = value
            elif name == "data":
                data.append(value)
            elif name == "event":
                event.event = value
            elif name == "retry":
                self.retry = int(value)
