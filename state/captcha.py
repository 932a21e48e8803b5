"""The shared pool of single-use captcha params (``captcha_verify_param``), in Redis.

Owns ``CaptchaPool``: a sorted set (``<p>captcha``) of params scored by the ms time they
expire. An operator or a solver pushes params (``push``); a completion takes one (``take``),
atomically in Lua on the Redis clock, so across any number of replicas each param is handed
out once and an expired one never. ``depth`` counts the live ones for metrics and status.
"""

from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["CaptchaPool"]

# Drop the expired, then pop the one closest to expiry (it is the most likely to be wasted).
_TAKE = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
local got = redis.call('ZPOPMIN', KEYS[1])
return got[1]
"""

_PUSH = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ms = ms + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'NX', until_ms, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return redis.call('ZCARD', KEYS[1])
"""

_DEPTH = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. ms, '+inf')
"""


class CaptchaPool:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def __repr__(self) -> str:
        return f"<CaptchaPool {self.keys.captcha}>"

    async def push(self, params: list[str], ttl: float) -> int:
        """Add params that stay valid ``ttl`` seconds; returns the live depth after."""
        if not params:
            return await self.depth()
        keys = [self.keys.captcha]
        return int(await self.redis.eval(_PUSH, 1, *keys, int(ttl * 1000), *params))

    async def take(self) -> str | None:
        """One live param, removed for everyone; ``None`` when the pool is empty."""
        got = await self.redis.eval(_TAKE, 1, self.keys.captcha)
        if got is None:
            return None
        return got.decode() if isinstance(got, bytes) else str(got)

    async def depth(self) -> int:
        return int(await self.redis.eval(_DEPTH, 1, self.keys.captcha))
