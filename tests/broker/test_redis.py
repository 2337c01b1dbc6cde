"""What only the Redis backend has: its keys, as older versions left them."""

from __future__ import annotations

import pytest

from chatroom.broker import open_backend
from chatroom.broker.backend import Draft


@pytest.mark.redis
async def test_redis_rooms_from_before_the_activity_index_are_entered_once(
    redis_url: str,
) -> None:
    import redis.asyncio as aioredis

    first = open_backend(redis_url)
    await first.start()
    await first.append("a", Draft("message", "alice", 1_000, "old"))
    await first.append("a", Draft("message", "alice", 2_000, "newest"))
    await first.append("b", Draft("join", "bob", 3_000))
    await first.close()
    # what an older version left: no activity index, nothing marked filled
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete("chatroom:activity", "chatroom:activity-filled")
        again = open_backend(redis_url)
        await again.start()
        try:
            assert await again.active_rooms(0) == {"a": 2_000, "b": 3_000}
            assert await client.exists("chatroom:activity-filled")
        finally:
            await again.close()
    finally:
        await client.aclose()
