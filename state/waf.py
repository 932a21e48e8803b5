"""The WAF breakers every replica shares, one per egress route: while a route's breaker is
open, no completion is sent on that route.

Owns ``WafBreaker``: one hash per route (``<p>waf:<route>``) with ``until`` (ms on the Redis
clock), ``backoff`` (seconds) and ``blocked``. ``trip`` opens a route's breaker for ``base``
seconds, doubling on each trip up to ``cap``. When ``until`` passes the breaker is half-open
(``blocked`` still set): it stays shut until one replica, holding the route's probe lock
(``probe_lock``), has probed the route and ``clear``ed it (or tripped it again, doubled).
Cleared, the hash expires a backoff later, so a quiet spell starts again at ``base``.
``open_for`` says for each route the seconds left (0 = closed, ``HALF_OPEN`` = a probe is
due), for all routes in one Lua call, so a replica's view of every route costs one round trip;
``states`` says the same with why each was shut (``why``: ``waf``, a block page, or ``down``,
its proxy could not be reached: a trip passes its own base and cap for that).
"""

from redis.asyncio import Redis

from state.keys import Keys
from state.locks import Lock

__all__ = ["HALF_OPEN", "WafBreaker"]

HALF_OPEN = -1.0

# KEYS[1] the route's hash; ARGV[1] base seconds, ARGV[2] cap seconds, ARGV[3] why ("waf" or
# "down"). Returns {ms until it closes, backoff seconds}; a trip while open changes nothing.
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
redis.call('HSET', KEYS[1], 'until', until_ms, 'backoff', backoff, 'blocked', 1, 'why', ARGV[3])
-- Kept until a probe clears it; the expiry only forgets a route nobody used for long.
redis.call('PEXPIRE', KEYS[1], math.floor((backoff + 2 * tonumber(ARGV[2])) * 1000))
return {math.floor(backoff * 1000), backoff}
"""

# KEYS the routes' hashes. Returns, per key, two values: ms left (0 closed, -1 half-open)
# and why it was shut ("waf" when the hash does not say).
_LEFT = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HMGET', key, 'until', 'blocked', 'why')
  local until_ms = tonumber(fields[1] or '0')
  if until_ms > ms then
    out[2 * i - 1] = until_ms - ms
  elseif fields[2] then
    out[2 * i - 1] = -1
  else
    out[2 * i - 1] = 0
  end
  out[2 * i] = fields[3] or 'waf'
end
return out
"""

_CLEAR = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
if tonumber(redis.call('HGET', KEYS[1], 'until') or '0') > ms then return 0 end
if redis.call('HDEL', KEYS[1], 'blocked') == 0 then return 0 end
local backoff = tonumber(redis.call('HGET', KEYS[1], 'backoff') or '0')
redis.call('PEXPIRE', KEYS[1], math.max(1, math.floor(backoff * 2000)))
return 1
"""


class WafBreaker:
    def __init__(self, redis: Redis, keys: Keys, base: float, cap: float) -> None:
        self.redis = redis
        self.keys = keys
        self.base = base
        self.cap = cap

    def __repr__(self) -> str:
        return f"<WafBreaker {self.keys.waf('*')} {self.base:g}..{self.cap:g}s>"

    async def trip(
        self,
        route: str = "direct",
        why: str = "waf",
        base: float | None = None,
        cap: float | None = None,
    ) -> float:
        """Open the route's breaker (or keep it open); returns the seconds until it closes.
        ``base``/``cap`` default to the WAF's."""
        base, cap = base or self.base, cap or self.cap
        left_ms, _ = await self.redis.eval(_TRIP, 1, self.keys.waf(route), base, cap, why)
        return int(left_ms) / 1000

    async def open_for(self, *routes: str) -> list[float]:
        """Seconds left on each route's breaker (0 = closed, ``HALF_OPEN`` = its window is
        over and it waits for a probe), in the order given."""
        return [left for left, _ in await self.states(*routes)]

    async def states(self, *routes: str) -> list[tuple[float, str]]:
        """``open_for`` with why each breaker was shut (``waf`` or ``down``)."""
        names = [self.keys.waf(route) for route in routes or ("direct",)]
        out = await self.redis.eval(_LEFT, len(names), *names)
        pairs = zip(out[::2], out[1::2], strict=True)
        return [(HALF_OPEN if int(ms) < 0 else int(ms) / 1000, str(why)) for ms, why in pairs]

    async def clear(self, route: str = "direct") -> bool:
        """Close a half-open breaker after a probe got through; False if it was not half-open
        (tripped again meanwhile, or already cleared)."""
        return bool(await self.redis.eval(_CLEAR, 1, self.keys.waf(route)))

    def probe_lock(self, route: str, seconds: float) -> Lock:
        """The lock one replica holds while it probes ``route``."""
        return Lock(self.redis, self.keys.lock(f"waf-probe:{route}"), seconds)
