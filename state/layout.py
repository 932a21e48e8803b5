"""Moving the key names of older releases to today's layout (``state.keys``), at start-up.

Owns ``migrate`` and ``renamed``. Older releases named the pool and shared keys without a hash
tag on a single Redis or Sentinel (``zai:tokens``, ``zai:token:<id>``, ...) and with the whole
prefix as the tag on a cluster (``{zai}:tokens``, ``{zai}:{k:<id>}:key``, ...). Today every
pool and shared name is ``<p>{pool}:...``, a client key's ``<p>{k:<id>}:...`` and an account's
files ``<p>{f:<user>}:...`` on every kind of Redis. ``migrate`` finds the names of either
older form (SCAN on every master of a cluster: names of the unmarked form are spread over all
slots) and moves each to its new name, never over a name that exists already: the newer key
wins, the older one is left in place and counted (its name is logged, for the operator).
On one Redis (plain or Sentinel) a move is ``RENAMENX``: atomic, the TTL kept. On a cluster
old and new names hash to different slots, which ``RENAMENX`` refuses (CROSSSLOT), so a move
is ``DUMP`` + ``PTTL``, ``RESTORE`` with that TTL (no ``REPLACE``: a name that exists
answers BUSYKEY and is left alone), then ``DEL``; that is not atomic, which the lock covers.
Replicas starting at once take the lock ``<p>{pool}:lock:layout`` in turn, each waiting for
it before it serves: the first moves, the others find nothing left, so the move is logged
once with its count, and running it again is a no-op. A scan that finds nothing to move
writes ``<p>{pool}:layout`` (``MARK``), and a start that finds the mark skips the scan and the
lock: a large Redis is not scanned by every worker of every replica at each start. The mark
is written only by a scan that moved nothing, so during a rolling upgrade, while replicas of
the older release still write older names, each start moves what they wrote; the first start
after them marks the layout done.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import NamedTuple

from loguru import logger
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from state.keys import Keys
from state.locks import Lock

__all__ = ["MARK", "Moved", "migrate", "renamed"]

# The first segment of every pool and shared name (``state.keys``) after the prefix: what
# an older release wrote as ``<p><head>...`` is today's ``<p>{pool}:<head>...``. A name with
# another head is not the gateway's and is never touched.
POOL_HEADS = frozenset(
    {
        *("tokens", "token", "rotation", "cooldown", "dead", "seq", "rotated", "leases"),
        *("revoked", "instances", "instance", "chats", "chat", "conv", "guests", "facts"),
        *("lock", "captcha", "waf", "slots", "pace", "keys", "response", "usage", "traffic"),
        *("upstream", "layout"),
    }
)
TAGGED = ("{k:", "{f:")  # client keys' and files' own tags: only the prefix before them moves
LOCK_SECONDS = 120.0  # the lock's life: longer than moving a pool's keys takes
_BATCH = 200  # names moved per round trip (one Redis) or side by side (a cluster)
MARK = "hash-tags"  # the value of ``Keys.layout`` once no older name is left to move


class Moved(NamedTuple):
    """What one ``migrate`` did: names moved, and older names left because the new exists."""

    moved: int
    kept: int


def old_prefixes(prefix: str) -> list[str]:
    """The prefixes older releases wrote under: the cluster's tagged one first, then this.

    >>> old_prefixes("zai:"), old_prefixes("{gw}:")
    (['{zai}:', 'zai:'], ['{gw}:'])
    """
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return [prefix]  # a prefix with a tag of its own was kept on a cluster
    return ["{" + (prefix.rstrip(":") or "zai") + "}:", prefix]


def renamed(keys: Keys, name: str) -> str | None:
    """Today's name of an older release's ``name``; None when it is not one (already today's,
    or not the gateway's).

    >>> k = Keys("zai:")
    >>> renamed(k, "zai:tokens"), renamed(k, "{zai}:{k:a1}:rpm"), renamed(k, "zai:{pool}:seq")
    ('zai:{pool}:tokens', 'zai:{k:a1}:rpm', None)
    """
    for old in old_prefixes(keys.prefix):
        if not name.startswith(old):
            continue
        rest = name[len(old) :]
        if rest.startswith(TAGGED):
            new = keys.prefix + rest
        elif rest.partition(":")[0] in POOL_HEADS:
            new = keys.pool + rest
        else:
            continue
        return new if new != name else None
    return None


async def migrate(redis: Redis, keys: Keys, wait: float = LOCK_SECONDS) -> Moved:
    """Move every name of an older layout to today's, under the layout lock (waited for up to
    ``wait`` seconds, then the move runs anyway: each step refuses to overwrite). Nothing at
    all when the layout is marked done."""
    if await redis.get(keys.layout) == MARK:
        return Moved(0, 0)
    lock = Lock(redis, keys.lock("layout"), LOCK_SECONDS)
    until = time.monotonic() + wait
    while not await lock.acquire() and time.monotonic() < until:
        await asyncio.sleep(0.2)
    try:
        found = [(name, new) async for name, new in _old_names(redis, keys)]
        moved = kept = 0
        for start in range(0, len(found), _BATCH):
            batch = found[start : start + _BATCH]
            done = await _move(redis, batch)
            moved += sum(1 for ok in done if ok)
            left = [old for (old, _), ok in zip(batch, done, strict=True) if ok is False]
            kept += len(left)
            for old in left:
                logger.warning("Redis key {} left in place: its new name exists already", old)
        if not moved:
            await redis.set(keys.layout, MARK)
    finally:
        await lock.release()
    if moved or kept:
        logger.info(
            "Redis key layout: moved {} keys of an older release to the hash-tagged names"
            " ({} left in place: a newer key holds their name)",
            moved,
            kept,
        )
    return Moved(moved, kept)


async def _old_names(redis: Redis, keys: Keys) -> AsyncIterator[tuple[str, str]]:
    seen: set[str] = set()
    for old in old_prefixes(keys.prefix):
        async for name in redis.scan_iter(match=_glob(old) + "*", count=1000):
            new = renamed(keys, name)
            if new is not None and name not in seen:
                seen.add(name)
                yield name, new


async def _move(redis: Redis, pairs: Iterable[tuple[str, str]]) -> list[bool | None]:
    """Each pair moved (True), left because the new name exists (False), or gone (None)."""
    pairs = list(pairs)
    if isinstance(redis, RedisCluster):
        return list(await asyncio.gather(*(_copy(redis, old, new) for old, new in pairs)))
    async with redis.pipeline(transaction=False) as pipe:
        for old, new in pairs:
            pipe.renamenx(old, new)
        replies = await pipe.execute(raise_on_error=False)
    # an error is "no such key": it expired (or another replica moved it) since the scan
    return [None if isinstance(r, Exception) else bool(r) for r in replies]


async def _copy(redis: Redis, old: str, new: str) -> bool | None:
    dumped = await redis.dump(old)
    ttl = await redis.pttl(old)
    if dumped is None or ttl == -2:
        return None
    try:
        await redis.restore(new, max(0, ttl), dumped)
    except ResponseError as exc:
        if "BUSYKEY" not in str(exc):
            raise
        return False
    await redis.delete(old)
    return True


def _glob(text: str) -> str:
    """``text`` as a literal in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
