"""Images already uploaded upstream, shared by every replica: the content-hash cache.

Owns ``FileCache``: one string per (account, image) pair, ``<p>{f:<user_id>}:file:<sha256>``,
holding the file object the upstream answered when that account uploaded those bytes,
expiring after ``IMAGE_CACHE_TTL`` seconds. A file belongs to the account that uploaded it,
so the key names the account; one account's keys share a hash tag, so ``get`` of all the
images of a request is one MGET and ``put`` one pipelined round trip, on Redis Cluster too.
A conversation that sends the same screenshot every turn uploads it once.
"""

from typing import Any

import msgspec
from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["FileCache"]


class FileCache:
    def __init__(self, redis: Redis, keys: Keys, ttl: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"<FileCache {self.keys.file('*', '*')} ttl={self.ttl:g}s>"

    async def get(self, user_id: str, digests: list[str]) -> dict[str, dict[str, Any]]:
        """The cached file object of each digest that has one."""
        if not digests or self.ttl <= 0:
            return {}
        values = await self.redis.mget([self.keys.file(user_id, d) for d in digests])
        return {d: msgspec.json.decode(v) for d, v in zip(digests, values, strict=True) if v}

    async def put(self, user_id: str, files: dict[str, dict[str, Any]]) -> None:
        if not files or self.ttl <= 0:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for digest, file in files.items():
                key = self.keys.file(user_id, digest)
                pipe.set(key, msgspec.json.encode(file), px=max(1, int(self.ttl * 1000)))
            await pipe.execute()
