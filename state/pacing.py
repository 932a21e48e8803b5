"""Pacing every replica obeys: a floor on the gap between upstream calls on each egress route.

Owns ``Pacer``: a GCRA with no burst, one string per route (``<p>pace:<route>``) holding the
ms time (Redis clock) the next call on that route may leave. ``reserve`` takes the candidate
routes and, in one Lua call, picks the one that can send soonest (ties go to the first, so the
caller's turn order stands), books its slot and moves the route's next time on by the gap;
the caller sleeps the wait and sends. A booking that would wait longer than ``max_wait`` is
refused and books nothing. The gap is drawn by the caller in [min, min + jitter] ms for each
call, so the rhythm is not a fingerprint (PROTOCOL.md section 6.3: a floor, not a bucket,
which would let bursts through).
"""

import random

from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["Pacer"]

_RESERVE = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local best, best_at = 1, nil
for i, key in ipairs(KEYS) do
  local at = math.max(ms, tonumber(redis.call('GET', key) or '0'))
  if best_at == nil or at < best_at then best, best_at = i, at end
end
local wait = best_at - ms
if wait > tonumber(ARGV[2]) then return {0, wait} end
local gap = tonumber(ARGV[1])
redis.call('SET', KEYS[best], best_at + gap, 'PX', wait + gap + 1000)
return {best, wait}
"""


class Pacer:
    def __init__(
        self, redis: Redis, keys: Keys, min_gap_ms: int, jitter_ms: int, max_wait: float
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.min_gap_ms = min_gap_ms
        self.jitter_ms = jitter_ms
        self.max_wait = max_wait

    def __repr__(self) -> str:
        gap = f"{self.min_gap_ms}..{self.min_gap_ms + self.jitter_ms}ms"
        return f"<Pacer {gap} max_wait={self.max_wait:g}s>"

    async def reserve(self, routes: list[str]) -> tuple[int, float]:
        """Book the next slot on the route that can send soonest: (its index, seconds to
        wait). Index -1 when even the soonest would wait longer than ``max_wait`` (nothing
        booked; the seconds say how long the wait would have been)."""
        gap = self.min_gap_ms + random.randint(0, self.jitter_ms)  # a rhythm, not a secret
        names = [self.keys.pace(route) for route in routes]
        best, wait = await self.redis.eval(
            _RESERVE, len(names), *names, gap, int(self.max_wait * 1000)
        )
        return int(best) - 1, int(wait) / 1000
