"""The WAF breakers every replica shares, one per egress route: while a route's breaker is
open, no completion is sent on that route.

Owns ``WafBreaker``: one hash per route (``<p>waf:<route>``) with ``until`` (ms on the Redis
clock) and ``backoff`` (seconds). ``trip`` opens a route's breaker for ``base`` seconds,
doubling on each trip up to ``cap``; the hash expires a backoff after it closes, so a quiet
spell starts again at ``base``. ``open_for`` says how many seconds each route has left
(0 = closed), for all routes in one Lua call, so a replica's view of every route costs one
round trip.
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
redis.call('PEXPIRE', KEYS[1], math.floor(backoff * 2000))
return {math.floor(backoff * 1000), backoff}
"""

_LEFT = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local left = {}
for i, key in ipairs(KEYS) do
  local until_ms = tonumber(redis.call('HGET', key, 'until') or '0')
  left[i] = math.max(0, until_ms - ms)
end
return left
"""


class WafBreaker:
    def __init__(self, redis: Redis, keys: Keys, base: float, cap: float) -> None:
        self.redis = redis
        self.keys = keys
        self.base = base
        self.cap = cap

    def __repr__(self) -> str:
        return f"<WafBreaker {self.keys.waf('*')} {self.base:g}..{self.cap:g}s>"

    async def trip(self, route: str = "direct") -> float:
        """Open the route's breaker (or keep it open); returns the seconds until it closes."""
        left_ms, _ = await self.redis.eval(_TRIP, 1, self.keys.waf(route), self.base, self.cap)
        return int(left_ms) / 1000

    async def open_for(self, *routes: str) -> list[float]:
        """Seconds left on each route's breaker (0 = closed), in the order given."""
        names = [self.keys.waf(route) for route in routes or ("direct",)]
        return [int(ms) / 1000 for ms in await self.redis.eval(_LEFT, len(names), *names)]
