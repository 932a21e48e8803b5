"""Pacing every replica obeys: a floor on the gap between upstream calls on each egress route.

Owns ``Pacer``: a GCRA with no burst per route, held by Redis (its clock, one Lua call per
booking). ``reserve`` takes the candidate routes and picks the one that can send soonest
(ties go to the first, so the caller's turn order stands), books that call's slot on it and
returns the wait; the caller sleeps the wait and sends. A slot is the call's time and its gap:
no other call on the route leaves within it. A booking that would wait longer than
``max_wait`` is refused and books nothing. The gap is drawn by the caller in [min, min +
jitter] ms for each call, so the rhythm is not a fingerprint (PROTOCOL.md section 6.3: a
floor, not a bucket, which would let bursts through). With a token id given and a token gap
set, the same call is also held to that pooled token's own floor (``<p>pace:token:<id>``, the
ms time its next call may leave): a call its token holds back books the first free slot on
the route from then on, so a route's slots are kept as a sorted set (``<p>slots:<route>``),
not one time, and calls with other tokens still use the route's free slots before it.
"""

import random

from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["Pacer"]

_RESERVE = """
-- A route's booked slots: members '<start>:<end>' (ms), scored by start. A new slot [t, t + gap)
-- fits where it overlaps none, the earliest such t not before ``lower``.
local function fit(key, lower, gap)
  local t = lower
  local slots = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #slots, 2 do
    local s, e = tonumber(slots[i + 1]), tonumber(string.match(slots[i], ':(%d+)$'))
    if e > t then
      if t + gap <= s then return t end
      t = e
    end
  end
  return t
end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local routes = tonumber(ARGV[3])  -- KEYS[1..routes] are routes; a KEYS[routes + 1], the token
local gap = tonumber(ARGV[1])
local token = KEYS[routes + 1]
local lower = ms
if token then lower = math.max(ms, tonumber(redis.call('GET', token) or '0')) end
local best, best_at = 1, nil
for i = 1, routes do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ms - 120001)  -- a gap is at most 120 s
  local at = fit(KEYS[i], lower, gap)
  if best_at == nil or at < best_at then best, best_at = i, at end
end
local wait = best_at - ms
if wait > tonumber(ARGV[2]) then return {0, wait} end
if gap > 0 then  -- with no route gap, a call held by its token holds no other call back
  redis.call('ZADD', KEYS[best], best_at, string.format('%d:%d', best_at, best_at + gap))
  local last = redis.call('ZRANGE', KEYS[best], -1, -1)[1]
  redis.call('PEXPIRE', KEYS[best], tonumber(string.match(last, ':(%d+)$')) - ms + 1000)
end
if token then
  local token_gap = tonumber(ARGV[4])
  redis.call('SET', token, best_at + token_gap, 'PX', wait + token_gap + 1000)
end
return {best, wait}
"""


class Pacer:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        min_gap_ms: int,
        jitter_ms: int,
        max_wait: float,
        token_gap_ms: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.min_gap_ms = min_gap_ms
        self.jitter_ms = jitter_ms
        self.max_wait = max_wait
        self.token_gap_ms = token_gap_ms  # 0: tokens are not paced on their own

    @property
    def off(self) -> bool:
        """No gap of any kind: calls leave unpaced (the gaps may be set live later)."""
        return not (self.min_gap_ms or self.jitter_ms or self.token_gap_ms)

    def __repr__(self) -> str:
        gap = f"{self.min_gap_ms}..{self.min_gap_ms + self.jitter_ms}ms"
        token = f" token {self.token_gap_ms}ms" if self.token_gap_ms else ""
        return f"<Pacer {gap}{token} max_wait={self.max_wait:g}s>"

    async def reserve(self, routes: list[str], token_id: str = "") -> tuple[int, float]:
        """Book the next slot on the route that can send soonest, no sooner than the floor of
        the pooled token ``token_id`` (when given and a token gap is set): (the route's index,
        seconds to wait). Index -1 when even the soonest would wait longer than ``max_wait``
        (nothing booked; the seconds say how long the wait would have been)."""
        jitter = random.randint(0, self.jitter_ms)  # a rhythm, not a secret
        names = [self.keys.pace(route) for route in routes]
        if token_id and self.token_gap_ms:
            names.append(self.keys.pace_token(token_id))
        best, wait = await self.redis.eval(
            _RESERVE,
            len(names),
            *names,
            self.min_gap_ms + jitter,
            int(self.max_wait * 1000),
            len(routes),
            self.token_gap_ms + jitter,
        )
        return int(best) - 1, int(wait) / 1000
