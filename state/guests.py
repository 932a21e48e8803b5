"""A reserve of pre-fetched guest credentials, shared by all replicas.

Owns ``GuestReserve``. Anonymous requests pop guests from ``<p>guests`` (each used exactly
once: LPOP is atomic) so they pay no extra upstream round trip; a replica may pop a few at once
and keep them for its next requests, so most requests pay no Redis round trip either.
Whichever replica notices the reserve below half of ``GUEST_RESERVE`` takes a short lock and
refills it in the background; a replica that takes guests also tops it up every half second,
so a sustained load finds it full rather than draining it to half first.
Entries older than ``max_age`` are discarded rather than trusted.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from state.keys import Keys
from state.locks import Lock

__all__ = ["GuestReserve", "StoredGuest"]


_SIGNINS_AT_ONCE = 16  # upstream sign-ins in flight per refill (pacing still spaces them)


class StoredGuest(msgspec.Struct):
    token: str
    user_id: str
    name: str
    at: float


class GuestReserve:
    # KEYS[1] the reserve list; ARGV[1] how many to pop
    # Returns {entries, length left}
    TAKE = """
    local entries = redis.call('LPOP', KEYS[1], ARGV[1]) or {}
    return {entries, redis.call('LLEN', KEYS[1])}
    """

    def __init__(self, redis: Redis, keys: Keys, size: int, max_age: float = 3600.0) -> None:
        self.redis = redis
        self.keys = keys
        self.size = size
        self.max_age = max_age
        self._take = redis.register_script(self.TAKE)

    def __repr__(self) -> str:
        return f"<GuestReserve size={self.size}>"

    async def take(self, count: int = 1) -> tuple[list[StoredGuest], int]:
        """Pop up to ``count`` guests still young enough to use, and how many are left."""
        entries, left = await self._take(keys=[self.keys.guests], args=[count])
        guests = [msgspec.json.decode(entry, type=StoredGuest) for entry in entries]
        return [guest for guest in guests if self.fresh(guest)], int(left)

    def low(self, left: int) -> bool:
        """Below half: refill now."""
        return left < max(1, self.size // 2)

    def fresh(self, guest: StoredGuest) -> bool:
        return time.time() - guest.at <= self.max_age

    async def refill(self, fetch: Callable[[], Awaitable[StoredGuest]]) -> int:
        """Top the reserve up to its size, if no other replica is doing it; returns added."""
        lock = Lock(self.redis, self.keys.lock("guest-refill"), 30)
        if not await lock.acquire():
            return 0
        try:
            missing = self.size - await self.redis.llen(self.keys.guests)
            added = 0
            while added < missing:  # some sign-ins at a time, pushed in one command
                count = min(_SIGNINS_AT_ONCE, missing - added)
                batch = await asyncio.gather(*(fetch() for _ in range(count)))
                await self.redis.rpush(self.keys.guests, *(msgspec.json.encode(g) for g in batch))
                added += len(batch)
            return added
        finally:
            await lock.release()
