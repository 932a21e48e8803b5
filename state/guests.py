"""A reserve of pre-fetched guest credentials, shared by all replicas.

Owns ``GuestReserve``. Anonymous requests pop a guest from ``<p>guests`` (each used exactly
once: LPOP is atomic) so they pay no extra upstream round trip. Whichever replica notices the
reserve below half of ``GUEST_RESERVE`` takes a short lock and refills it in the background.
Entries older than ``max_age`` are discarded rather than trusted.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["GuestReserve", "StoredGuest"]


class StoredGuest(msgspec.Struct):
    token: str
    user_id: str
    name: str
    at: float


class GuestReserve:
    # KEYS[1] the reserve list
    # Returns {entry or false, length left}
    TAKE = """
    local entry = redis.call('LPOP', KEYS[1])
    return {entry, redis.call('LLEN', KEYS[1])}
    """

    def __init__(self, redis: Redis, keys: Keys, size: int, max_age: float = 3600.0) -> None:
        self.redis = redis
        self.keys = keys
        self.size = size
        self.max_age = max_age
        self._take = redis.register_script(self.TAKE)

    def __repr__(self) -> str:
        return f"<GuestReserve size={self.size}>"

    async def take(self) -> tuple[StoredGuest | None, bool]:
        """Pop one guest; the flag says the reserve is low and should be refilled."""
        entry, left = await self._take(keys=[self.keys.guests])
        low = int(left) < max(1, self.size // 2)
        if not entry:
            return None, low
        guest = msgspec.json.decode(entry, type=StoredGuest)
        if time.time() - guest.at > self.max_age:
            return None, low
        return guest, low

    async def refill(self, fetch: Callable[[], Awaitable[StoredGuest]]) -> int:
        """Top the reserve up to its size, if no other replica is doing it; returns added."""
        if not await self.redis.set(self.keys.lock("guest-refill"), "1", nx=True, ex=30):
            return 0
        try:
            missing = self.size - await self.redis.llen(self.keys.guests)
            added = 0
            while added < missing:  # a few sign-ins at a time, pushed in one command
                batch = await asyncio.gather(*(fetch() for _ in range(min(8, missing - added))))
                await self.redis.rpush(self.keys.guests, *(msgspec.json.encode(g) for g in batch))
                added += len(batch)
            return added
        finally:
            await self.redis.delete(self.keys.lock("guest-refill"))
