"""The live upstream config every replica follows: overrides of moving settings, in Redis.

Owns ``ConfigStore``: one hash (``<p>upstream:config``), a field per overridden setting
(its lowercase name -> the value as JSON) and ``rev``, a counter raised by every change, so
a replica that polls learns in one small read whether there is anything new to apply. A
change is one transaction (fields set or dropped, ``rev`` raised), so no replica ever reads
half of one. What the fields mean and which are allowed is the caller's (``server/ops``).
"""

from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["ConfigStore"]

_REV = "rev"


class ConfigStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.upstream_config

    def __repr__(self) -> str:
        return f"<ConfigStore {self.key}>"

    async def rev(self) -> int:
        """The revision of the stored overrides (0: never changed)."""
        return int(await self.redis.hget(self.key, _REV) or 0)

    async def read(self) -> tuple[int, dict[str, Any]]:
        """(revision, setting name -> value) as stored; a value that is not JSON (a hand
        edit gone wrong) is left out rather than failing every replica."""
        raw = cast(dict[str, str], await self.redis.hgetall(self.key))
        values: dict[str, Any] = {}
        for name, text in raw.items():
            if name == _REV:
                continue
            try:
                values[name] = msgspec.json.decode(text)
            except msgspec.DecodeError:
                continue
        return int(raw.get(_REV) or 0), values

    async def change(self, values: dict[str, Any]) -> int:
        """Set each name to its value, or drop it where the value is None (back to the
        setting); one transaction. Answers the new revision."""
        put: dict[Any, str] = {
            name: msgspec.json.encode(v).decode() for name, v in values.items() if v is not None
        }
        drop = [name for name, v in values.items() if v is None]
        async with self.redis.pipeline(transaction=True) as pipe:
            if put:
                pipe.hset(self.key, mapping=put)
            if drop:
                pipe.hdel(self.key, *drop)
            pipe.hincrby(self.key, _REV, 1)
            answers = await pipe.execute()
        return int(answers[-1])

    async def clear(self) -> int:
        """Drop every override (back to the settings); the revision still rises."""
        stored = cast(list[str], await self.redis.hkeys(self.key))
        names = [name for name in stored if name != _REV]
        return await self.change(dict.fromkeys(names))
