"""Token rotation: the upstream handed out a new token for a pooled one; swap it atomically.

Owns ``TokenRotation``. ``GET /api/v1/auths/`` with a pooled token may answer another token
(PROTOCOL.md section 6.8). The new token takes the old one's place in one Lua call,
compare-and-set on the old token (a replica whose check lost the race changes nothing): the
token hash, its info (role, uses, failures...), its place in rotation/cooldown/dead and its
leases move to the new id, and ``<p>rotated:<old id>`` says "rotated to <new id>" for a grace
period. The old info is gone, so a request still in flight on the old token releases into
nothing: it can neither cool nor kill the account.
"""

import time
from typing import cast

from redis.asyncio import Redis

from state.keys import Keys, token_id

__all__ = ["TokenRotation"]


class TokenRotation:
    # KEYS[1] tokens hash (id -> token)
    # KEYS[2] old id's info hash;   KEYS[3] new id's info hash
    # KEYS[4] rotation zset;        KEYS[5] cooldown zset;   KEYS[6] dead set
    # KEYS[7] old id's leases zset; KEYS[8] new id's leases zset
    # KEYS[9] the old id's rotated marker (string)
    # ARGV[1] old id; ARGV[2] old token (compared); ARGV[3] new id; ARGV[4] new token
    # ARGV[5] grace (ms) the marker lives; ARGV[6] now (ms)
    # Returns 1 when replaced, 0 when the old token is no longer there (another replica
    # replaced or removed it first).
    REPLACE = """
    local unpack = unpack or table.unpack
    if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
    local info = redis.call('HGETALL', KEYS[2])
    if #info > 0 then redis.call('HSET', KEYS[3], unpack(info)) end
    redis.call('HSET', KEYS[3], 'rotated_from', ARGV[1], 'rotated_at', ARGV[6])
    redis.call('DEL', KEYS[2])
    for _, key in ipairs({KEYS[4], KEYS[5]}) do
        local score = redis.call('ZSCORE', key, ARGV[1])
        if score then
            redis.call('ZREM', key, ARGV[1])
            redis.call('ZADD', key, score, ARGV[3])
        end
    end
    if redis.call('SREM', KEYS[6], ARGV[1]) == 1 then redis.call('SADD', KEYS[6], ARGV[3]) end
    local ttl = redis.call('PTTL', KEYS[7])
    if ttl > 0 then
        redis.call('ZUNIONSTORE', KEYS[8], 2, KEYS[8], KEYS[7])
        redis.call('PEXPIRE', KEYS[8], ttl)
        redis.call('DEL', KEYS[7])
    end
    redis.call('SET', KEYS[9], ARGV[3], 'PX', ARGV[5])
    return 1
    """

    def __init__(self, redis: Redis, keys: Keys, grace: float = 300.0) -> None:
        self.redis = redis
        self.keys = keys
        self.grace = grace
        self._replace = redis.register_script(self.REPLACE)

    def __repr__(self) -> str:
        return f"<TokenRotation {self.keys.pool} grace={self.grace:.0f}s>"

    async def replace(self, old: str, new: str) -> str | None:
        """Put ``new`` where ``old`` is; its id, or None if ``old`` was no longer pooled."""
        keys = self.keys
        old_id, new_id = token_id(old), token_id(new)
        done = await self._replace(
            keys=[
                keys.tokens,
                keys.token(old_id),
                keys.token(new_id),
                keys.rotation,
                keys.cooldown,
                keys.dead,
                keys.leases(old_id),
                keys.leases(new_id),
                keys.rotated(old_id),
            ],
            args=[old_id, old, new_id, new, int(self.grace * 1000), int(time.time() * 1000)],
        )
        return new_id if done else None

    async def rotated_to(self, tid: str) -> str | None:
        """The id a token was rotated to, while its grace period lasts."""
        return cast(str | None, await self.redis.get(self.keys.rotated(tid)))
