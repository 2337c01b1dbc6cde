"""redis://host:port/db: many processes on many machines sharing one Redis.

- stream: the rooms' events, one Redis stream per room, and the one XREAD per process
  that reads them (RedisBackend);
- presence: who is in each room, kept in the same Redis (RedisPresence);
- keys: the key names both use.
"""

from chatroom.broker.redis.presence import RedisPresence
from chatroom.broker.redis.stream import RedisBackend

__all__ = ["RedisBackend", "RedisPresence"]
