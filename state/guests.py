"""A reserve of pre-fetched guest credentials, shared by all replicas.

Owns ``GuestReserve``. Anonymous requests pop guests from ``<p>guests`` (each used exactly
once: LPOP is atomic) so they pay no extra upstream round trip; a replica may pop a few at once
and keep them for its next requests, so most requests pay no Redis round trip either.
Whichever replica notices the reserve below half of ``GUEST_RESERVE`` takes a short lock and
refills it in the background; a replica that takes guests also tops it up every half second,
so a sustained load finds it full rather than draining it to half first. A refill keeps up
to ``SIGNINS_UNPACED`` sign-ins going (``SIGNINS_PACED`` when calls are paced), pushes them as
they come in, and goes on while takes keep the reserve below its target (up to
``_REFILL_FOR`` seconds, then it lets go of the lock): a fill-then-wait refill of 16 at a time
drained under a sustained load, and 30 % of the requests at c=50 signed in on their own path.
The reserve follows demand: each take counts the guests asked for, per second, in Redis (in
the same script, so no round trip of its own), and a refill fills to what all replicas asked
for in the last ``_HORIZON`` seconds (at least ``GUEST_RESERVE``, at most
``GUEST_RESERVE_MAX``), so a sustained load is served from the reserve instead of signing in
on the request's path. Entries older than ``max_age`` are discarded rather than trusted.
"""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from state.keys import Keys
from state.locks import Lock

__all__ = ["SIGNINS_PACED", "SIGNINS_UNPACED", "GuestReserve", "StoredGuest"]


# Upstream sign-ins one refill keeps going: unpaced, enough to outrun a saturated worker's
# demand; paced, a slot is booked per sign-in, so more in flight would only book slots ahead of
# the requests' own calls while the pace, not the latency, sets the rate.
SIGNINS_UNPACED, SIGNINS_PACED = 64, 2
_PUSH_EVERY = 16  # guests pushed to the reserve per RPUSH
_REFILL_FOR = 10.0  # seconds one refill may go on under sustained demand before letting go
_WINDOW = 5  # seconds of demand the rate is measured over
_HORIZON = 2.0  # seconds of demand a refill stocks: a sign-in batch's time, and the next top-up


class StoredGuest(msgspec.Struct):
    token: str
    user_id: str
    name: str
    at: float


class GuestReserve:
    # KEYS[1] the reserve list, KEYS[2] the demand hash; ARGV[1] how many to pop
    # Returns {entries, length left}; the demand hash counts the ask under the Redis clock's
    # second (kept 2 windows).
    TAKE = """
    local entries = redis.call('LPOP', KEYS[1], ARGV[1]) or {}
    redis.call('HINCRBY', KEYS[2], redis.call('TIME')[1], ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[2])
    return {entries, redis.call('LLEN', KEYS[1])}
    """
    # KEYS[1] the demand hash; ARGV[1] the window (s). Returns the asks of the last full
    # window's seconds, and forgets older ones.
    DEMAND = """
    local now = tonumber(redis.call('TIME')[1])
    local total = 0
    local flat = redis.call('HGETALL', KEYS[1])
    for i = 1, #flat, 2 do
        local at = tonumber(flat[i])
        if at < now - 2 * ARGV[1] then
            redis.call('HDEL', KEYS[1], flat[i])
        elseif at < now and at >= now - ARGV[1] then
            total = total + tonumber(flat[i + 1])
        end
    end
    return total
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        size: int,
        max_age: float = 3600.0,
        max_size: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.size = size
        self.max_size = max(size, max_size)  # how far demand may grow it
        self.target = size  # what the last refill here filled to
        self.max_age = max_age
        self._take = redis.register_script(self.TAKE)
        self._demand = redis.register_script(self.DEMAND)

    def __repr__(self) -> str:
        return f"<GuestReserve size={self.size}>"

    async def take(self, count: int = 1) -> tuple[list[StoredGuest], int]:
        """Pop up to ``count`` guests still young enough to use, and how many are left."""
        keys = [self.keys.guests, self.keys.guest_demand]
        entries, left = await self._take(keys=keys, args=[count, 2 * _WINDOW])
        guests = [msgspec.json.decode(entry, type=StoredGuest) for entry in entries]
        return [guest for guest in guests if self.fresh(guest)], int(left)

    def low(self, left: int) -> bool:
        """Below half of what the demand asks for: refill now."""
        return left < max(1, self.target // 2)

    async def wanted(self) -> int:
        """How many the reserve should hold: the last seconds' demand, within bounds."""
        if self.max_size <= self.size:
            return self.size
        asked = int(await self._demand(keys=[self.keys.guest_demand], args=[_WINDOW]))
        return min(self.max_size, max(self.size, math.ceil(asked / _WINDOW * _HORIZON)))

    def fresh(self, guest: StoredGuest) -> bool:
        return time.time() - guest.at <= self.max_age

    async def refill(
        self, fetch: Callable[[], Awaitable[StoredGuest]], in_flight: int = SIGNINS_UNPACED
    ) -> int:
        """Top the reserve up to what demand asks, if no other replica is doing it, with up to
        ``in_flight`` sign-ins at once; returns how many were added."""
        lock = Lock(self.redis, self.keys.lock("guest-refill"), 30)
        if not await lock.acquire():
            return 0
        try:
            added = 0
            until = time.monotonic() + _REFILL_FOR
            while time.monotonic() < until:
                self.target = await self.wanted()
                missing = self.target - await self.redis.llen(self.keys.guests)
                if missing <= 0:
                    break
                added += await self._sign_in(fetch, missing, in_flight, until)
            return added
        finally:
            await lock.release()

    async def _sign_in(
        self,
        fetch: Callable[[], Awaitable[StoredGuest]],
        count: int,
        in_flight: int,
        until: float,
    ) -> int:
        """Sign ``count`` guests in, up to ``in_flight`` at once, starting none after the
        monotonic ``until``, and push them as they come (``_PUSH_EVERY`` per command); returns
        how many were pushed. A failed sign-in stops its worker; what the others got is still
        pushed, then it is raised."""
        pending: list[bytes] = []
        left, pushed = count, 0

        async def push() -> None:
            nonlocal pushed
            batch = pending[:]
            pending.clear()
            if batch:
                await self.redis.rpush(self.keys.guests, *batch)
                pushed += len(batch)

        async def worker() -> None:
            nonlocal left
            # Paced sign-ins come a few a second: without the deadline a round for hundreds
            # would outlive the lock, and a second replica would start a round beside it.
            while left > 0 and time.monotonic() < until:
                left -= 1
                pending.append(msgspec.json.encode(await fetch()))
                if len(pending) >= _PUSH_EVERY:
                    await push()

        outcomes = await asyncio.gather(
            *(worker() for _ in range(max(1, min(in_flight, count)))), return_exceptions=True
        )
        await push()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return pushed
