"""Short locks in Redis that only their owner can release.

Owns ``Lock``. ``acquire`` sets the key to a random owner token with ``NX`` and a ``PX``
expiry, so a holder that dies frees it when the time runs out; ``release`` deletes the key in
one Lua step only while it still holds this holder's token. Without the compare, a holder that
outlived its expiry would delete the lock another replica took after it, and two replicas
would then do the work the lock guards at once.
"""

import secrets

from redis.asyncio import Redis

__all__ = ["Lock"]

# KEYS[1] the lock; ARGV[1] the owner token. Returns 1 when deleted, 0 when not ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lock:
    """One lock key held for at most ``seconds``; a fresh owner token per acquire."""

    def __init__(self, redis: Redis, key: str, seconds: float) -> None:
        self.redis = redis
        self.key = key
        self.ms = max(1, int(seconds * 1000))
        self.owner = ""
        self._release = redis.register_script(RELEASE)

    def __repr__(self) -> str:
        return f"<Lock {self.key} {self.ms}ms held={bool(self.owner)}>"

    async def acquire(self) -> bool:
        """Take the lock if no one holds it; True when taken."""
        owner = secrets.token_hex(16)
        if await self.redis.set(self.key, owner, nx=True, px=self.ms):
            self.owner = owner
            return True
        return False

    async def release(self) -> bool:
        """Give the lock back if it is still ours; True when it was deleted."""
        owner, self.owner = self.owner, ""
        if not owner:
            return False
        return bool(await self._release(keys=[self.key], args=[owner]))
