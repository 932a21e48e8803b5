"""The WAF breaker every replica shares: while it is open, no completion is sent.

Owns ``WafBreaker``: one hash (``<p>waf``) with ``until`` (ms on the Redis clock) and
``backoff`` (seconds). ``trip`` opens it for ``base`` seconds, doubling on each trip up to
``cap``; the hash expires a backoff after it closes, so a quiet spell starts again at ``base``.
``open_for`` says how many seconds are left (0 = closed). Both are one Lua call.
"""

from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["WafBreaker"]

_TRIP = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if until_ms > ms then
  return {until_ms - ms, tonumber(redis.call('HGET', KEYS[1], 'backoff'))}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'backoff') or '0')
local backoff = tonumber(ARGV[1])
if last > 0 then backoff = math.min(tonumber(ARGV[2]), last * 2) end
until_ms = ms + backoff * 1000
redis.call('HSET', KEYS[1], 'until', until_ms, 'backoff', backoff)
redis.call('PEXPIRE', KEYS[1], backoff * 2000)
return {backoff * 1000, backoff}
"""

_LEFT = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if until_ms > ms then return until_ms - ms end
return 0
"""


class WafBreaker:
    def __init__(self, redis: Redis, keys: Keys, base: float, cap: float) -> None:
        self.redis = redis
        self.keys = keys
        self.base = base
        self.cap = cap

    def __repr__(self) -> str:
        return f"<WafBreaker {self.keys.waf} {self.base:g}..{self.cap:g}s>"

    async def trip(self) -> float:
        """Open the breaker (or keep it open); returns the seconds until it closes."""
        left_ms, _ = await self.redis.eval(_TRIP, 1, self.keys.waf, self.base, self.cap)
        return int(left_ms) / 1000

    async def open_for(self) -> float:
        return int(await self.redis.eval(_LEFT, 1, self.keys.waf)) / 1000
