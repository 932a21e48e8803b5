"""The shared pool of upstream user tokens: rotation, leases, cooldowns, dead tokens.

Owns ``TokenPool``. Every replica and worker sees ONE pool in Redis (layout: ``state.keys``).
A request costs one round trip on its path: ``acquire`` (one Lua script: bring back tokens
whose cooldown ended, pick the least recently used token under its concurrency cap, lease
it). ``release`` (one script: drop the lease and record what the attempt said about the
token: ``ok``, ``spare`` for a failure that was the upstream's and not the token's,
``cooldown``, ``dead``) is awaited only when the attempt failed (its cooldown is the client's
Retry-After); a success goes through ``release_soon``, which sends the releases of many
requests in one pipeline after the answer, off every request's path.
Leases carry a deadline, so a replica that dies leaks nothing: its leases are ignored once
past due, pruned at the next pick, and their key expires. Cooldowns back off exponentially
(``POOL_COOLDOWN_BASE`` doubling per episode up to ``POOL_COOLDOWN_CAP``; failures of requests
already in flight when an episode began are part of it); a success clears the count;
dead tokens stay out until a health check (``revive``) brings them back. The names a pick
finds while it runs (the chosen token's info and leases) are built in the script from
``Keys.pool``; they share the ``{pool}`` hash tag of its ``KEYS[]``, so the scripts run on a
Redis Cluster as on one Redis.
"""

import asyncio
import time
from dataclasses import dataclass
from random import getrandbits
from typing import Any, TypedDict, cast

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from state.batch import Call, WriteBehind, evalsha
from state.conversations import Mapping, Thread
from state.keys import Keys, mask, token_id
from state.tasks import stop_tasks

__all__ = ["Lease", "Pick", "TokenPool", "TokenStatus", "Unavailable"]


@dataclass(frozen=True, slots=True)
class Lease:
    token_id: str
    lease_id: str
    taken: int = 0  # ms time it was taken: a failure on it belongs to the episode it saw


@dataclass(frozen=True, slots=True)
class Pick:
    lease: Lease
    token: str
    user_id: str
    role: str
    name: str
    mapping: Mapping | None = None  # a continued conversation's chat, on its own token


@dataclass(frozen=True, slots=True)
class Unavailable:
    # "busy" (every token at its cap), "cooling", "empty", "conv_busy" (another turn of
    # the conversation in flight)
    reason: str
    retry_after: float  # seconds until a token should be usable again


@dataclass(frozen=True, slots=True)
class TokenStatus:
    id: str
    masked: str
    state: str  # active | cooling | dead | pending
    role: str
    failures: int
    cooldown_left: float
    leases: int
    orphans: int  # of those leases, held by no live gateway process (they lapse by deadline)
    uses: int
    last_used: float
    reason: str


_SETTLE_EVERY = 0.25  # seconds between tries to revoke unsettled leases while Redis is away


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class _ReleaseCall(TypedDict):
    """The RELEASE script's KEYS[] and ARGV[], as keywords of the script or of ``evalsha``."""

    keys: list[str]
    args: list[str | int]


class TokenPool:
    """One pool of upstream tokens shared through Redis. Used as::

    pool = TokenPool(redis, Keys("zai:"), cooldown_base=30, cooldown_cap=900,
                     max_concurrency=4, lease_ttl=120, owner="host:pid")
    pick = await pool.acquire()          # Pick, or Unavailable with retry_after
    await pool.release(pick.lease, "ok")  # or "spare" / "cooldown" / "dead"
    """

    # KEYS[1] rotation zset (id -> pick sequence, lowest picked first)
    # KEYS[2] cooldown zset (id -> ms time it returns)
    # KEYS[3] pick sequence counter
    # KEYS[4] tokens hash (id -> token)
    # KEYS[5] this lease id's revoked marker
    # ARGV[1] now (ms)
    # ARGV[2] lease id
    # ARGV[3] lease time to live (ms)
    # ARGV[4] max concurrent leases per token (0 = no cap)
    # ARGV[5] the pool's stem, ``Keys.pool`` (for token:<id> and leases:<id>)
    # Returns {id, token, user_id, role, name}, or {"", reason, retry_after_ms} with reason
    # "busy" (all at their cap), "cooling" (all cooling down), "empty" (no token in rotation) or
    # "revoked" (the caller gave up on this lease id: a call that ran late, after a freeze).
    _HEAD = """
    local now = tonumber(ARGV[1])
    local cap = tonumber(ARGV[4])
    local function take(id)
        local leases = ARGV[5] .. 'leases:' .. id
        redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
        if cap ~= 0 and redis.call('ZCARD', leases) >= cap then return nil end
        redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), id)
        redis.call('ZADD', leases, now + tonumber(ARGV[3]), ARGV[2])
        redis.call('PEXPIRE', leases, tonumber(ARGV[3]))
        local info = ARGV[5] .. 'token:' .. id
        redis.call('HSET', info, 'last_used', now)
        redis.call('HINCRBY', info, 'uses', 1)
        local meta = redis.call('HMGET', info, 'user_id', 'role', 'name')
        return {id, redis.call('HGET', KEYS[4], id), meta[1] or '', meta[2] or '', meta[3] or ''}
    end
    if redis.call('EXISTS', KEYS[5]) == 1 then
        return {'', 'revoked', 0}
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
        redis.call('ZREM', KEYS[2], id)
        redis.call('ZADD', KEYS[1], 0, id)
        redis.call('HSET', ARGV[5] .. 'token:' .. id, 'cooldown_until', 0)
    end
    """
    _PICK = """
    local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
    for _, id in ipairs(ids) do
        local got = take(id)
        if got then return got end
    end
    if #ids > 0 then
        return {'', 'busy', 1000}
    end
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    if #first > 0 then
        return {'', 'cooling', tonumber(first[2]) - now}
    end
    return {'', 'empty', 0}
    """
    ACQUIRE = _HEAD + _PICK
    # A turn of a continued conversation (state.conversations), the same pick with:
    # KEYS[6] the conversation hash; KEYS[7] its turn key; ARGV[6] the request holding the turn.
    # Another request's turn in flight: {"", "conv_busy", its ms left}. Else the turn is taken
    # (again, by the same request: a retry) and the token the chat belongs to is leased if it
    # is in rotation and under its cap, answering the mapping after the five fields
    # {chat_id, parent_id, count, prefix, answer}; otherwise any token, as ACQUIRE (the core
    # then starts a fresh chat with the whole history).
    _PINNED = """
    local held = redis.call('GET', KEYS[7])
    if held and held ~= ARGV[6] then
        return {'', 'conv_busy', redis.call('PTTL', KEYS[7])}
    end
    redis.call('SET', KEYS[7], ARGV[6], 'PX', tonumber(ARGV[3]))
    local conv = redis.call('HMGET', KEYS[6], 'token_id', 'chat_id', 'parent_id', 'count',
                            'prefix', 'answer')
    if conv[1] and redis.call('ZSCORE', KEYS[1], conv[1]) then
        local got = take(conv[1])
        if got then
            for i = 2, 6 do table.insert(got, conv[i] or '') end
            return got
        end
    end
    """
    ACQUIRE_PINNED = _HEAD + _PINNED + _PICK

    # KEYS[1] leases zset of the token
    # KEYS[2] token info hash
    # KEYS[3] rotation zset
    # KEYS[4] cooldown zset
    # KEYS[5] dead set
    # ARGV[1] lease id
    # ARGV[2] outcome: "ok" | "spare" | "cooldown" | "dead"
    # ARGV[3] now (ms)
    # ARGV[4] cooldown base (ms), doubled per consecutive cooldown episode
    # ARGV[5] cooldown cap (ms)
    # ARGV[6] token id
    # ARGV[7] reason (for cooldown and dead)
    # ARGV[8] ms time the lease was taken
    # Returns the cooldown left (ms), or 0.
    # A cooldown is one *episode*: failures of leases taken before it began, or reported while
    # it lasts, are the same trouble seen by requests already in flight, so they neither count
    # again nor push the return time (12 requests failing at once cost one base, not 2^11).
    RELEASE = """
    redis.call('ZREM', KEYS[1], ARGV[1])
    if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
    local id = ARGV[6]
    if ARGV[2] == 'ok' then
        redis.call('HSET', KEYS[2], 'failures', 0)
        return 0
    end
    if ARGV[2] == 'spare' then return 0 end
    if redis.call('SISMEMBER', KEYS[5], id) == 1 then return 0 end
    if ARGV[2] == 'dead' then
        redis.call('HSET', KEYS[2], 'reason', ARGV[7])
        redis.call('ZREM', KEYS[3], id)
        redis.call('ZREM', KEYS[4], id)
        redis.call('SADD', KEYS[5], id)
        return 0
    end
    local now = tonumber(ARGV[3])
    local meta = redis.call('HMGET', KEYS[2], 'cooldown_until', 'cooled_at')
    local back = tonumber(meta[1] or 0) or 0
    if back > now then return back - now end
    if tonumber(ARGV[8]) <= (tonumber(meta[2] or 0) or 0) then return 0 end
    local failures = redis.call('HINCRBY', KEYS[2], 'failures', 1)
    local wait = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ (failures - 1))
    back = now + wait
    redis.call('HSET', KEYS[2], 'reason', ARGV[7], 'cooldown_until', back, 'cooled_at', now)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[4], back, id)
    return wait
    """

    # KEYS[1] tokens hash; KEYS[2] the lease id's revoked marker
    # ARGV[1] lease id; ARGV[2] its token id ("" = unknown: an acquire that got no answer)
    # ARGV[3] the pool's stem, ``Keys.pool`` (for leases:<id>); ARGV[4] lease time to live (ms)
    # Marks the id revoked (an ACQUIRE still queued behind a frozen Redis then leases nothing)
    # and removes the lease wherever it was already made. Returns how many it removed.
    REVOKE = """
    redis.call('SET', KEYS[2], 1, 'PX', tonumber(ARGV[4]))
    local ids = {ARGV[2]}
    if ARGV[2] == '' then ids = redis.call('HKEYS', KEYS[1]) end
    local removed = 0
    for _, id in ipairs(ids) do
        removed = removed + redis.call('ZREM', ARGV[3] .. 'leases:' .. id, ARGV[1])
    end
    return removed
    """

    # KEYS[1] tokens hash; KEYS[2] token info hash; KEYS[3] rotation; KEYS[4] cooldown;
    # KEYS[5] dead set
    # ARGV[1] token id; ARGV[2] "alive" | "dead"; ARGV[3] reason; ARGV[4] now (ms);
    # ARGV[5..7] role, user_id, name (for "alive")
    # Returns 1, or 0 if the token is no longer in the pool.
    VERDICT = """
    if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
    redis.call('HSET', KEYS[2], 'checked_at', ARGV[4], 'reason', ARGV[3])
    if ARGV[2] == 'alive' then
        redis.call('HSET', KEYS[2], 'role', ARGV[5], 'user_id', ARGV[6], 'name', ARGV[7],
                   'failures', 0, 'cooldown_until', 0)
        redis.call('SREM', KEYS[5], ARGV[1])
        redis.call('ZREM', KEYS[4], ARGV[1])
        redis.call('ZADD', KEYS[3], 'NX', 0, ARGV[1])
    else
        redis.call('ZREM', KEYS[3], ARGV[1])
        redis.call('ZREM', KEYS[4], ARGV[1])
        redis.call('SADD', KEYS[5], ARGV[1])
    end
    return 1
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        cooldown_base: float,
        cooldown_cap: float,
        max_concurrency: int,
        lease_ttl: float,
        owner: str,
        batch: WriteBehind | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cooldown_base = cooldown_base
        self.cooldown_cap = cooldown_cap
        self.max_concurrency = max_concurrency
        self.lease_ttl = lease_ttl
        self.owner = owner
        self.held: set[Lease] = set()  # leases in flight in this process, renewed by heartbeat
        # Releases sent off the path and not yet answered: a pick that finds every token busy
        # while one is on its way waits for it (a kept-alive client's next request can reach
        # the pick before the release of its previous one has reached Redis).
        self.releasing: set[asyncio.Future[Any]] = set()
        # Lease ids whose acquire or release got no answer (Redis frozen or gone): the call
        # may still run when Redis resumes, so each is revoked once Redis answers again.
        # lease id -> token id ("" when the acquire never said which token).
        self.unsettled: dict[str, str] = {}
        self._settling: asyncio.Task[None] | None = None
        self._acquire = redis.register_script(self.ACQUIRE)
        self._acquire_pinned = redis.register_script(self.ACQUIRE_PINNED)
        self._release = redis.register_script(self.RELEASE)
        self._revoke = redis.register_script(self.REVOKE)
        self._verdict = redis.register_script(self.VERDICT)
        self.batch = batch or WriteBehind(redis)  # shared with the other off-path writes
        self.batch.uses(self._release, self._acquire, self._acquire_pinned)

    def __repr__(self) -> str:
        return f"<TokenPool {self.keys.pool} held={len(self.held)}>"

    async def acquire(self, thread: Thread | None = None) -> Pick | Unavailable:
        """Lease a token; with ``thread`` (a continued conversation) also take its turn and
        prefer the token its chat belongs to, answering the chat's mapping in ``Pick``."""
        pick, _ = await self.acquire_with(thread)
        return pick

    async def acquire_with(
        self, thread: Thread | None = None, before: Call | None = None
    ) -> tuple[Pick | Unavailable, Any]:
        """``acquire``, with another script (``before``: a client key's check) run first in
        the same round trip; answers its reply too (an exception if it failed: the caller
        decides what a pick is worth without it)."""
        keys = self.keys
        # The id is made here, not in Redis, so an acquire that gets no answer can be revoked.
        lease_id = f"{self.owner}:{getrandbits(48):012x}"
        now = _ms(time.time())
        script = self._acquire
        names = [keys.rotation, keys.cooldown, keys.seq, keys.tokens, keys.revoked(lease_id)]
        args: list[str | int] = [now, lease_id, _ms(self.lease_ttl), self.max_concurrency]
        args.append(keys.pool)
        if thread is not None:
            script = self._acquire_pinned
            names += [keys.conversation(thread.key), keys.conversation_turn(thread.key)]
            args.append(thread.holder)
        other: Any = None
        try:
            # In the next batch (state.batch): under load, many picks and the releases queued
            # before them share one round trip.
            if before is None:
                (reply,) = await self.batch.run([(script, names, args)])
            else:
                other, reply = await self.batch.run([before, (script, names, args)])
            if isinstance(reply, Exception):
                raise reply
        except (RedisError, asyncio.CancelledError):
            # No answer (or the caller hung up while waiting): the script may still run.
            self._unsettle(lease_id, "")
            raise
        if not reply[0]:
            return Unavailable(reply[1], max(0, int(reply[2])) / 1000), other
        lease = Lease(reply[0], lease_id, now)
        self.held.add(lease)
        mapping = None
        if len(reply) > 5 and reply[5]:
            mapping = Mapping(reply[5], reply[6], int(reply[7] or 0), reply[8], reply[9])
        return Pick(lease, reply[1], reply[2], reply[3], reply[4], mapping), other

    async def release(self, lease: Lease, outcome: str, reason: str = "") -> float:
        """Drop the lease and record the outcome; returns the cooldown given (seconds)."""
        self.held.discard(lease)
        try:
            wait = await self._release(**self._release_call(lease, outcome, reason))
        except (RedisError, asyncio.CancelledError):
            # Else its slot stays taken for LEASE_TTL. Cancelled: the client hung up while the
            # release waited for a connection (a frozen Redis), so it may never be sent.
            self._unsettle(lease.lease_id, lease.token_id)
            raise
        return int(wait) / 1000

    def release_soon(self, lease: Lease, outcome: str = "ok") -> None:
        """Release a lease that went well (or was not used: ``spare``), off the caller's
        path: the releases queued while the loop turns go to Redis together (``state.batch``:
        one round trip for all of them). The lease stays in ``held`` (renewed) until its
        release is answered; if Redis fails, it is revoked once Redis answers (``unsettled``)."""
        call = self._release_call(lease, outcome)
        sent = self.batch.add(lambda pipe: evalsha(pipe, self._release, **call))
        self.releasing.add(sent)
        sent.add_done_callback(lambda future: self._released(lease, future))

    async def flush(self) -> None:
        """Wait for the queued releases to be sent (at shutdown)."""
        await self.batch.flush()
        await asyncio.sleep(0)  # their done callbacks run

    async def releases_sent(self, timeout: float = 1.0) -> None:
        """Wait (at most ``timeout``) until the releases sent so far have been answered."""
        if self.releasing:
            await asyncio.wait(list(self.releasing), timeout=timeout)

    def _released(self, lease: Lease, sent: asyncio.Future[Any]) -> None:
        self.releasing.discard(sent)
        self.held.discard(lease)
        failure = asyncio.CancelledError() if sent.cancelled() else sent.exception()
        if failure is not None:
            # Revoked once Redis answers: else its slot stays taken for LEASE_TTL.
            logger.warning("could not release a lease on {} yet: {!r}", lease.token_id, failure)
            self._unsettle(lease.lease_id, lease.token_id)

    def _release_call(self, lease: Lease, outcome: str, reason: str = "") -> _ReleaseCall:
        keys, tid = self.keys, lease.token_id
        return {
            "keys": [keys.leases(tid), keys.token(tid), keys.rotation, keys.cooldown, keys.dead],
            "args": [
                lease.lease_id,
                outcome,
                _ms(time.time()),
                _ms(self.cooldown_base),
                _ms(self.cooldown_cap),
                tid,
                reason,
                lease.taken,
            ],
        }

    def _unsettle(self, lease_id: str, tid: str) -> None:
        self.unsettled[lease_id] = tid
        if self._settling is None or self._settling.done():
            self._settling = asyncio.ensure_future(self._settle())

    async def _settle(self) -> None:
        """Revoke every unsettled lease id, trying again until Redis answers."""
        while self.unsettled:
            try:
                await self.settle()
            except RedisError:
                await asyncio.sleep(_SETTLE_EVERY)

    async def settle(self) -> int:
        """Revoke the unsettled lease ids now; returns how many leases that removed."""
        removed = 0
        for lease_id, tid in list(self.unsettled.items()):
            removed += await self._revoke(
                keys=[self.keys.tokens, self.keys.revoked(lease_id)],
                args=[lease_id, tid, self.keys.pool, _ms(self.lease_ttl)],
            )
            self.unsettled.pop(lease_id, None)
        return removed

    async def stop(self) -> None:
        """Stop retrying revocations (process exit: the leases lapse with their deadline)."""
        if self._settling is not None:
            await stop_tasks([self._settling])

    async def renew(self) -> None:
        """Push the deadline of every lease this process holds (called by the heartbeat)."""
        if not self.held:
            return
        deadline = _ms(time.time() + self.lease_ttl)
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease in list(self.held):
                key = self.keys.leases(lease.token_id)
                pipe.zadd(key, {lease.lease_id: deadline}, xx=True)
                pipe.pexpire(key, _ms(self.lease_ttl))
            await pipe.execute()

    async def add(self, tokens: list[str]) -> list[str]:
        """Add tokens (de-duplicated, idempotent); they wait as ``pending`` for a verdict.
        One transaction, like ``remove``: a remove running at the same time sees a token
        whole or not at all (never its info hash left without the token)."""
        ids = []
        async with self.redis.pipeline(transaction=True) as pipe:
            for token in dict.fromkeys(t.strip() for t in tokens if t.strip()):
                tid = token_id(token)
                ids.append(tid)
                pipe.hsetnx(self.keys.tokens, tid, token)
                pipe.hsetnx(self.keys.token(tid), "added", _ms(time.time()))
            await pipe.execute()
        return ids

    async def remove(self, ids: list[str]) -> None:
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            for tid in ids:
                pipe.hdel(keys.tokens, tid)
                pipe.delete(keys.token(tid), keys.leases(tid))
                pipe.zrem(keys.rotation, tid)
                pipe.zrem(keys.cooldown, tid)
                pipe.srem(keys.dead, tid)
            await pipe.execute()

    async def verdict(
        self,
        tid: str,
        alive: bool,
        reason: str = "",
        role: str = "",
        user_id: str = "",
        name: str = "",
    ) -> bool:
        """Record a health check: ``alive`` puts the token (back) in rotation, else dead."""
        keys = self.keys
        done = await self._verdict(
            keys=[keys.tokens, keys.token(tid), keys.rotation, keys.cooldown, keys.dead],
            args=[tid, "alive" if alive else "dead", reason, _ms(time.time()), role, user_id, name],
        )
        return bool(done)

    async def tokens(self) -> dict[str, str]:
        """id -> token, for the health check (never for display)."""
        return cast(dict[str, str], await self.redis.hgetall(self.keys.tokens))

    async def counts(self) -> dict[str, int]:
        """How many tokens are in each state (as in ``status``), in one round trip of O(1)
        commands: for the readiness probe, which runs every few seconds on every replica."""
        keys, now = self.keys, _ms(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(keys.tokens)
            pipe.zcard(keys.rotation)
            pipe.zcount(keys.cooldown, "-inf", now)  # ended: active until the next pick
            pipe.zcount(keys.cooldown, f"({now}", "+inf")
            pipe.scard(keys.dead)
            total, rotation, ended, cooling, dead = await pipe.execute()
        active = rotation + ended
        return {
            "active": active,
            "cooling": cooling,
            "pending": max(0, total - active - cooling - dead),
            "dead": dead,
        }

    async def status(self) -> list[TokenStatus]:
        keys = self.keys
        now = time.time()
        tokens = await self.tokens()
        ids = sorted(tokens)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(keys.rotation, 0, -1)
            pipe.zrange(keys.cooldown, 0, -1, withscores=True)
            pipe.smembers(keys.dead)
            pipe.zrangebyscore(keys.instances, _ms(now), "+inf")
            for tid in ids:
                pipe.hgetall(keys.token(tid))
                pipe.zrangebyscore(keys.leases(tid), _ms(now), "+inf")
            replies = await pipe.execute()
        # A cooldown that has ended is over now, not at the next pick (which moves the token
        # back): an idle pool must not look like it has no active token.
        rotation, dead = set(replies[0]), set(replies[2])
        cooling = {tid for tid, back in replies[1] if back > now * 1000}
        rotation |= {tid for tid, _ in replies[1]} - cooling
        live = {*replies[3], self.owner}
        rows = []
        for i, tid in enumerate(ids):
            info, leases = replies[4 + 2 * i], replies[5 + 2 * i]
            # A lease id is "<owner instance>:<random>": an owner not alive holds nothing.
            orphans = sum(1 for lease in leases if lease.rpartition(":")[0] not in live)
            state = (
                "dead"
                if tid in dead
                else "cooling"
                if tid in cooling
                else "active"
                if tid in rotation
                else "pending"
            )
            until = int(info.get("cooldown_until") or 0) / 1000
            rows.append(
                TokenStatus(
                    id=tid,
                    masked=mask(tokens[tid]),
                    state=state,
                    role=info.get("role", ""),
                    failures=int(info.get("failures") or 0),
                    cooldown_left=round(max(0.0, until - now), 3) if state == "cooling" else 0.0,
                    leases=len(leases),
                    orphans=orphans,
                    uses=int(info.get("uses") or 0),
                    last_used=int(info.get("last_used") or 0) / 1000,
                    reason=info.get("reason", ""),
                )
            )
        return rows
