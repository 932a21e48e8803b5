"""The key layout (issue 17 item 5): every name carries a hash tag on every kind of Redis
(the pool's and shared ones ``zai:{pool}:``, a client key's ``zai:{k:<id>}:``), and a pool an
older release wrote (untagged names on one Redis or Sentinel, ``{zai}:`` on a cluster) is moved
to today's names once at start-up, by one of the replicas starting at once, without
overwriting a newer key, and keeps serving its tokens: on fakeredis, a real redis-server,
Sentinel and a real three-master cluster."""

import asyncio
import inspect

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot

from state.client_keys import ClientKeys, parse_secret
from state.connection import connect
from state.keys import Keys, token_id
from state.layout import MARK, migrate, old_prefixes, renamed
from state.pool import Pick, TokenPool
from tests.accounts import ADMIN, HELLO, POOLED, TOKENS, tokens_used


class OldKeys(Keys):
    """The names an older release used: no ``{pool}:`` tag (with prefix ``{zai}:``, a
    cluster's). Today's scripts run on them unchanged, so they write a real older pool."""

    @property
    def pool(self) -> str:
        return self.prefix


def every_name(keys: Keys) -> list[str]:
    """One name of each kind ``Keys`` makes (methods get ``a1`` for each argument)."""
    names = []
    for attr in dir(Keys):
        if attr.startswith("_") or attr in ("prefix", "pool"):
            continue
        value = getattr(keys, attr)
        if callable(value):
            value = value(*["a1"] * len(inspect.signature(value).parameters))
        names.append(value)
    return names


def test_every_name_is_tagged_and_an_older_name_maps_to_it():
    keys = Keys("zai:")
    names = every_name(keys)
    assert len(names) > 30
    pool = [n for n in names if n.startswith("zai:{pool}:")]
    client = [n for n in names if n.startswith("zai:{k:a1}:")]
    files = [n for n in names if n.startswith("zai:{f:a1}:")]
    assert len(pool) + len(client) + len(files) == len(names)  # nothing untagged
    assert len({key_slot(n.encode()) for n in pool}) == 1  # the pick's names: one slot
    assert len({key_slot(n.encode()) for n in client}) == 1
    for old in ("zai:", "{zai}:"):
        older = every_name(OldKeys(old))
        assert [renamed(keys, name) for name in older] == [
            None if o == n else n for o, n in zip(older, names, strict=True)
        ]
    # today's names, and what is not the gateway's, are never touched
    assert all(renamed(keys, name) is None for name in names)
    assert renamed(keys, "zai:other:1") is None and renamed(keys, "zaix:tokens") is None
    assert old_prefixes("{gw}:") == ["{gw}:"]
    assert renamed(Keys("{gw}:"), "{gw}:tokens") == "{gw}:{pool}:tokens"


def _pool(redis, keys: Keys) -> TokenPool:
    return TokenPool(redis, keys, cooldown_base=30, cooldown_cap=60, max_concurrency=0,
                     lease_ttl=30.0, owner="old")  # fmt: skip


async def _older_release(redis) -> tuple[Keys, Pick, str]:
    """A pool (two live tokens, one dead, a lease in flight), a client key with a request of
    this minute, and shared facts, under an older release's names for this kind of Redis."""
    old = OldKeys("{zai}:" if isinstance(redis, RedisCluster) else "zai:")
    pool = _pool(redis, old)
    for n, tid in enumerate(await pool.add(TOKENS)):
        await pool.verdict(tid, n < 2, role="user", user_id=f"user-{n}", name=f"n{n}")
    pick = await pool.acquire()
    assert isinstance(pick, Pick)
    _, secret = await ClientKeys(redis, old).create(name="ci", rpm=5)
    kid, digest = parse_secret(secret)
    admitted = await ClientKeys(redis, old).admit(kid, digest, "glm-4.5", 1, 0, "r1")
    assert admitted.refused == ""
    await redis.hset(old.facts, "fe_version", "old")
    return old, pick, secret


async def test_an_older_pool_moves_once_and_keeps_serving(redis):
    keys = Keys("zai:")
    old, pick, secret = await _older_release(redis)
    await redis.hset(keys.facts, "fe_version", "new")  # written since: it must win
    # three replicas starting at once: one moves everything, the others find it done
    first, second, third = await asyncio.gather(*(migrate(redis, keys) for _ in range(3)))
    # 3 token hashes, tokens, rotation, dead, seq, a leases zset, the key set; on a cluster
    # also the client key's record and request log (``{zai}:{k:<id>}:...``)
    expected = 11 if isinstance(redis, RedisCluster) else 9
    assert sorted(m.moved for m in (first, second, third)) == [0, 0, expected]
    assert all(m.kept == 1 for m in (first, second, third))  # the older facts, left
    assert await redis.hget(keys.facts, "fe_version") == "new"
    assert await redis.hget(old.facts, "fe_version") == "old"
    left = [n for p in old_prefixes("zai:") async for n in redis.scan_iter(match=p + "*")]
    assert [n for n in left if renamed(keys, n)] == [old.facts]
    # the scans that moved nothing marked the layout done: a start now skips the scan, so
    # an older name written after it stays (as one a replica of the older release still runs
    # would write only before the mark: each start during a rolling upgrade moves those)
    assert await redis.get(keys.layout) == MARK
    await redis.rpush(old.guests, "late")
    assert await migrate(redis, keys) == (0, 0)
    assert await redis.lrange(old.guests, 0, -1) == ["late"] and not await redis.exists(keys.guests)
    await redis.delete(keys.layout)  # a scan again: it moves the late name, marks nothing
    assert await migrate(redis, keys) == (1, 1) and not await redis.exists(keys.layout)
    assert await redis.lrange(keys.guests, 0, -1) == ["late"]

    pool = _pool(redis, keys)
    rows = {row.id: row for row in await pool.status()}
    assert sorted(row.state for row in rows.values()) == ["active", "active", "dead"]
    assert rows[pick.lease.token_id].leases == 1  # the lease in flight, with its deadline
    assert 0 < await redis.pttl(keys.leases(pick.lease.token_id)) <= 30_000
    got = await pool.acquire()
    assert (
        isinstance(got, Pick)
        and got.token in TOKENS[:2]
        and got.lease.token_id != token_id(TOKENS[2])
    )
    kid, digest = parse_secret(secret)
    again = await ClientKeys(redis, keys).admit(kid, digest, "glm-4.5", 1, 0, "r2")
    assert again.refused == "" and again.limits[0].remaining == 3  # r1 still counts
    assert [k.name for k in await ClientKeys(redis, keys).list()] == ["ci"]


@pytest.mark.parametrize("where", ["redis-server", "cluster"])
async def test_a_gateway_serves_a_pool_an_older_release_wrote(gateway, request, where):
    """No token configured: only the moved pool can answer, with its own tokens."""
    if where == "cluster":
        url = request.getfixturevalue("real_cluster_set").url
    else:
        url = request.getfixturevalue("real_redis_server").url
    redis = connect(url, 2.0)
    try:
        await redis.flushall()
        await _older_release(redis)
        settings = {"anonymous_mode": False, "admin_token": ADMIN, "pool_max_concurrency": 4}
        gw = await gateway(*POOLED, redis_url=url, **settings)
        async with gw.openai() as client:
            for _ in range(3):
                reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
                assert reply.choices[0].message.content
        assert set(tokens_used(gw)) <= set(TOKENS[:2]) and sum(tokens_used(gw).values()) == 3
        assert await redis.hlen("zai:{pool}:tokens") == 3
        assert not [n async for n in redis.scan_iter(match="zai:tokens")]
    finally:
        await redis.aclose()
