"""The lock helper: only the owner's release deletes the lock (fakeredis and redis-server)."""

import asyncio
import time

from state.guests import GuestReserve, StoredGuest
from state.keys import Keys
from state.locks import Lock

KEYS = Keys("t:")


async def test_a_lock_is_held_once_and_released_by_its_owner(redis):
    a, b = Lock(redis, KEYS.lock("x"), 5), Lock(redis, KEYS.lock("x"), 5)
    assert await a.acquire()
    assert not await b.acquire()
    assert not await b.release()  # b never held it
    assert await redis.exists(KEYS.lock("x")) == 1
    assert await a.release()
    assert await redis.exists(KEYS.lock("x")) == 0
    assert await b.acquire()
    assert 0 < await redis.pttl(KEYS.lock("x")) <= 5000


async def test_an_expired_lock_taken_by_another_is_not_released_by_the_first(redis):
    first, second = Lock(redis, KEYS.lock("x"), 0.05), Lock(redis, KEYS.lock("x"), 5)
    assert await first.acquire()
    await asyncio.sleep(0.15)  # first outlived its expiry...
    assert await second.acquire()  # ...and another replica took the lock
    assert not await first.release()
    assert await redis.get(KEYS.lock("x")) == second.owner
    assert await second.release()


async def test_a_refill_that_lost_its_lock_leaves_the_new_owners_lock(redis):
    reserve = GuestReserve(redis, KEYS, size=2)
    key = KEYS.lock("guest-refill")

    async def slow() -> StoredGuest:
        # As if this refill outlived its lock and another replica took it meanwhile.
        await redis.set(key, "another-replica", px=5000)
        return StoredGuest("t", "u", "Guest", time.time())

    assert await reserve.refill(slow) == 2
    assert await redis.get(key) == "another-replica"
    assert await GuestReserve(redis, KEYS, size=4).refill(slow) == 0  # still locked out
