"""Facts about the upstream that every replica should learn once, not each on its own.

Owns ``Facts``: a small hash (``<p>facts``) of values with the time they were learned, e.g.
the front-end version read from the home page, or the last background self-check's report
(``SELF_CHECK``, JSON).
"""

import time
from typing import cast

from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["SELF_CHECK", "Facts"]

SELF_CHECK = "self_check"


class Facts:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def __repr__(self) -> str:
        return f"<Facts {self.keys.facts}>"

    async def get(self, name: str, max_age: float) -> str | None:
        value, at = await self.redis.hmget(self.keys.facts, [name, f"{name}_at"])
        if value is None or at is None or time.time() - float(at) > max_age:
            return None
        return cast(str, value)

    async def put(self, name: str, value: str) -> None:
        await self.redis.hset(self.keys.facts, mapping={name: value, f"{name}_at": time.time()})
