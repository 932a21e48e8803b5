"""The token pool's rules, run on fakeredis and on a real redis-server with the same Lua."""

import asyncio
import collections

import pytest

from state.connection import connect
from state.keys import Keys, token_id
from state.pool import Lease, Pick, TokenPool, Unavailable
from tests.redis_server import RedisServer, free_port

TOKENS = [f"eyJhbGciOiJFUzI1NiJ9.payload-{i}.signature-{i}" for i in range(3)]


def make_pool(redis, **overrides) -> TokenPool:
    options = {
        "cooldown_base": 0.2,
        "cooldown_cap": 0.5,
        "max_concurrency": 0,
        "lease_ttl": 30.0,
        "owner": "test",
    }
    options.update(overrides)
    return TokenPool(redis, Keys("t:"), **options)


async def alive(pool: TokenPool, tokens=TOKENS) -> list[str]:
    ids = await pool.add([*tokens, tokens[0]])
    for tid in dict.fromkeys(ids):
        await pool.verdict(tid, True, role="user", user_id=f"user-{tid}", name="n")
    return list(dict.fromkeys(ids))


async def test_added_tokens_wait_for_a_verdict_and_are_deduplicated(redis):
    pool = make_pool(redis)
    ids = await pool.add([TOKENS[0], " " + TOKENS[0], TOKENS[1], ""])
    assert set(ids) == {token_id(TOKENS[0]), token_id(TOKENS[1])}
    assert {row.state for row in await pool.status()} == {"pending"}
    assert await pool.acquire() == Unavailable("empty", 0)


async def test_rotation_is_round_robin(redis):
    pool = make_pool(redis)
    await alive(pool)
    counts = collections.Counter()
    for _ in range(30):
        pick = await pool.acquire()
        assert isinstance(pick, Pick) and pick.role == "user"
        counts[pick.token] += 1
        await pool.release(pick.lease, "ok")
    assert sorted(counts.values()) == [10, 10, 10]


async def test_concurrency_cap_per_token(redis):
    pool = make_pool(redis, max_concurrency=2)
    await alive(pool, TOKENS[:1])
    first, second = await pool.acquire(), await pool.acquire()
    assert isinstance(first, Pick) and isinstance(second, Pick)
    assert await pool.acquire() == Unavailable("busy", 1.0)
    assert [row.leases for row in await pool.status()] == [2]
    await pool.release(first.lease, "ok")
    assert isinstance(await pool.acquire(), Pick)


async def test_failure_cools_down_with_backoff_and_comes_back(redis):
    pool = make_pool(redis)
    await alive(pool, TOKENS[:2])
    pick = await pool.acquire()
    assert await pool.release(pick.lease, "cooldown", "HTTP 500") == pytest.approx(0.2)
    for _ in range(4):  # only the other token is used meanwhile
        other = await pool.acquire()
        assert other.token != pick.token
        await pool.release(other.lease, "ok")
    row = next(r for r in await pool.status() if r.id == pick.lease.token_id)
    assert row.state == "cooling" and row.failures == 1 and 0 < row.cooldown_left <= 0.2
    assert row.reason == "HTTP 500"
    await asyncio.sleep(0.25)
    seen = set()
    for _ in range(2):
        again = await pool.acquire()
        seen.add(again.token)
        await pool.release(again.lease, "cooldown")
    assert pick.token in seen
    rows = {r.id: r for r in await pool.status()}
    assert rows[pick.lease.token_id].failures == 2  # doubled: 0.4 s this time
    assert rows[pick.lease.token_id].cooldown_left > 0.25


async def test_concurrent_failures_on_one_token_are_one_cooldown_episode(redis):
    pool = make_pool(redis, cooldown_base=0.3, cooldown_cap=60.0)
    await alive(pool, TOKENS[:1])
    picks = [await pool.acquire() for _ in range(12)]  # 12 requests in flight on one token
    waits = await asyncio.gather(*(pool.release(p.lease, "cooldown", "429") for p in picks))
    (row,) = await pool.status()
    # One base, not 0.3 * 2**11 s: the 11 others are the same episode, already cooling.
    assert row.failures == 1 and row.cooldown_left <= 0.3
    assert max(waits) == pytest.approx(0.3, abs=0.01)
    late = await pool.acquire()  # still cooling
    assert isinstance(late, Unavailable) and late.reason == "cooling"
    await asyncio.sleep(0.35)
    again = await pool.acquire()
    assert isinstance(again, Pick)
    await pool.release(again.lease, "cooldown", "429")  # a new episode: doubled
    (row,) = await pool.status()
    assert row.failures == 2 and 0.3 < row.cooldown_left <= 0.6


async def test_a_failure_from_before_an_episode_is_part_of_it(redis):
    pool = make_pool(redis, cooldown_base=0.1, cooldown_cap=60.0)
    await alive(pool, TOKENS[:1])
    first, slow = await pool.acquire(), await pool.acquire()
    await pool.release(first.lease, "cooldown", "429")
    await asyncio.sleep(0.15)  # the episode is over when the slow request fails
    assert await pool.release(slow.lease, "cooldown", "429") == 0
    (row,) = await pool.status()
    assert row.failures == 1


async def test_a_spare_release_leaves_the_token_untouched(redis):
    pool = make_pool(redis)
    await alive(pool, TOKENS[:1])
    for _ in range(5):  # the upstream's 500s are not the token's: it stays in rotation
        pick = await pool.acquire()
        assert isinstance(pick, Pick)
        assert await pool.release(pick.lease, "spare", "unavailable: HTTP 500") == 0
    (row,) = await pool.status()
    assert (row.state, row.failures, row.leases, row.reason) == ("active", 0, 0, "")


async def test_all_cooling_says_when_the_first_returns(redis):
    pool = make_pool(redis, cooldown_base=1.0, cooldown_cap=5.0)
    await alive(pool, TOKENS[:1])
    pick = await pool.acquire()
    await pool.release(pick.lease, "cooldown")
    none = await pool.acquire()
    assert isinstance(none, Unavailable) and none.reason == "cooling"
    assert 0.5 < none.retry_after <= 1.0


async def test_success_clears_the_failure_count(redis):
    pool = make_pool(redis, cooldown_base=0.05)
    await alive(pool, TOKENS[:1])
    pick = await pool.acquire()
    await pool.release(pick.lease, "cooldown")
    await asyncio.sleep(0.08)
    pick = await pool.acquire()
    await pool.release(pick.lease, "ok")
    assert [r.failures for r in await pool.status()] == [0]


async def test_dead_token_leaves_until_a_health_check_revives_it(redis):
    pool = make_pool(redis)
    await alive(pool, TOKENS[:1])
    pick = await pool.acquire()
    await pool.release(pick.lease, "dead", "401")
    assert await pool.acquire() == Unavailable("empty", 0)
    assert [(r.state, r.reason) for r in await pool.status()] == [("dead", "401")]
    await pool.verdict(pick.lease.token_id, True, role="user", user_id="u", name="n")
    assert isinstance(await pool.acquire(), Pick)


async def test_lease_of_a_dead_replica_expires_by_itself(redis):
    # TTLs of a second leave room for a loaded CI machine between the steps.
    pool = make_pool(redis, max_concurrency=1, lease_ttl=1.0)
    await alive(pool, TOKENS[:1])
    assert isinstance(await pool.acquire(), Pick)  # never released: the replica "died"
    assert (await pool.acquire()).reason == "busy"
    await asyncio.sleep(1.1)
    assert await redis.exists(pool.keys.leases(token_id(TOKENS[0]))) == 0
    assert isinstance(await pool.acquire(), Pick)


async def test_renew_keeps_a_long_stream_leased(redis):
    pool = make_pool(redis, max_concurrency=1, lease_ttl=1.0)
    await alive(pool, TOKENS[:1])
    assert isinstance(await pool.acquire(), Pick)
    for _ in range(3):
        await asyncio.sleep(0.5)
        await pool.renew()
    assert (await pool.acquire()).reason == "busy"


async def test_removed_token_is_gone_everywhere(redis):
    pool = make_pool(redis)
    ids = await alive(pool, TOKENS[:2])
    await pool.remove(ids[:1])
    assert [r.id for r in await pool.status()] == ids[1:]
    for _ in range(3):
        pick = await pool.acquire()
        assert pick.lease.token_id == ids[1]
        await pool.release(pick.lease, "ok")


async def test_status_never_shows_a_full_token(redis):
    pool = make_pool(redis)
    await alive(pool)
    text = repr(await pool.status())
    assert not any(token in text for token in TOKENS)
    assert all(row.masked.startswith("eyJhbG") for row in await pool.status())


async def test_two_replicas_share_one_rotation(redis):
    a, b = make_pool(redis, owner="a"), make_pool(redis, owner="b")
    await alive(a)
    counts = collections.Counter()
    for i in range(30):
        pool = (a, b)[i % 2]
        pick = await pool.acquire()
        counts[pick.token] += 1
        await pool.release(pick.lease, "ok")
    assert sorted(counts.values()) == [10, 10, 10]


async def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(real_redis_server):
    from state.connection import connect

    redis = connect(real_redis_server.url, 2.0, 64)  # a bounded pool smaller than the burst
    await redis.flushall()
    pool = make_pool(redis)
    await alive(pool)

    async def one() -> None:
        pick = await pool.acquire()
        assert isinstance(pick, Pick)
        await pool.release(pick.lease, "ok")

    await asyncio.gather(*(one() for _ in range(300)))  # > 64 connections' worth at once
    assert sum(row.uses for row in await pool.status()) == 300
    await redis.aclose()


async def test_commands_wait_their_turn_for_a_connection_past_the_command_timeout(
    real_redis_server,
):
    # Ten commands of 60 ms each on one connection: the last waits 540 ms for it, past the
    # 0.2 s command timeout. Waiting for a free connection is queueing in this process, not
    # Redis failing, so none of them fails (it did: 503 "No connection available"). Each
    # command is a BLPOP that times out after 60 ms on a list that never fills (a Lua loop on
    # TIME never ends on Valkey, whose script clock stands still while the script runs).
    redis = connect(real_redis_server.url, 0.2, 1)
    try:
        waits = (redis.blpop(["t:never-filled"], timeout=0.06) for _ in range(10))
        assert await asyncio.gather(*waits) == [None] * 10
    finally:
        await redis.aclose()


async def test_successful_releases_are_sent_after_the_caller_moves_on(redis):
    pool = make_pool(redis)
    await alive(pool)
    picks = [await pool.acquire() for _ in range(20)]
    for pick in picks:
        assert isinstance(pick, Pick)
        pool.release_soon(pick.lease)
    # Nothing was awaited: the leases are still held (and renewed) until the batch is sent.
    assert len(pool.held) == 20
    assert sum(row.leases for row in await pool.status()) == 20
    await pool.flush()
    assert pool.held == set()
    assert sum(row.leases for row in await pool.status()) == 0
    assert all(row.state == "active" for row in await pool.status())


async def test_a_batch_of_releases_is_one_round_trip_on_redis_server():
    server = RedisServer().start()
    client = connect(server.url, 0.5)
    try:
        pool = make_pool(client)
        await alive(pool)
        picks = [await pool.acquire() for _ in range(20)]

        async def reads() -> int:
            return int((await client.info("stats"))["total_reads_processed"])

        await pool.release(picks.pop().lease, "ok")  # the release script is loaded now
        before = await reads()
        for pick in picks:
            pool.release_soon(pick.lease)
        await pool.flush()
        # One read for the pipeline of 19 releases (awaited one by one: 19; with redis-py's
        # own script pipelining, 2: it asks SCRIPT EXISTS first), plus the INFO.
        assert await reads() - before <= 2
        assert sum(row.leases for row in await pool.status()) == 0
    finally:
        await client.aclose()
        server.stop()


async def test_a_batch_after_redis_lost_its_scripts_still_releases(redis):
    pool = make_pool(redis)
    await alive(pool)
    picks = [await pool.acquire() for _ in range(5)]
    await pool.release(picks.pop().lease, "ok")  # the script is loaded...
    await redis.script_flush()  # ...and gone again (a restart, a failover): NOSCRIPT
    for pick in picks:
        pool.release_soon(pick.lease)
    await pool.flush()
    assert pool.held == set() and pool.unsettled == {}
    assert sum(row.leases for row in await pool.status()) == 0


async def test_a_batch_that_cannot_reach_redis_is_revoked_later():
    client = connect(f"redis://127.0.0.1:{free_port()}/0", 0.2)  # nothing listens there
    try:
        pool = make_pool(client)
        lease = Lease(token_id(TOKENS[0]), "test:lease-1")
        pool.held.add(lease)
        pool.release_soon(lease)
        await pool.flush()  # logged, not raised
        assert pool.held == set()
        # kept to be revoked once Redis answers, not left holding its slot for LEASE_TTL
        assert pool.unsettled == {lease.lease_id: lease.token_id}
    finally:
        await pool.stop()
        await client.aclose()


async def test_an_ended_cooldown_reads_active_before_any_pick(redis):
    pool = make_pool(redis, cooldown_base=0.1)
    await alive(pool, TOKENS[:1])
    pick = await pool.acquire()
    await pool.release(pick.lease, "cooldown", "429")
    assert [r.state for r in await pool.status()] == ["cooling"]
    await asyncio.sleep(0.15)  # nothing picks meanwhile: an idle pool
    (row,) = await pool.status()
    assert (row.state, row.cooldown_left, row.failures) == ("active", 0.0, 1)


async def test_a_pick_right_after_a_release_waits_for_it_instead_of_finding_all_busy(redis):
    # One account, one request at a time: a kept-alive client's next request can reach the
    # pick while the release of its previous one (sent off the path, after the answer) is
    # still on its way. It must get the token, not a 503 "every token is at its limit".
    from server.core.models import require_model
    from server.credentials.sources import PooledTokens

    pool = make_pool(redis, max_concurrency=1)
    await alive(pool, TOKENS[:1])
    tokens = PooledTokens(pool, guests=None)
    model = require_model("GLM-4.5")
    first = await tokens.acquire(model)
    await tokens.release(first, "ok")  # queued: sent in the next loop turn
    assert pool.releasing
    second = await tokens.acquire(model)
    assert second.token == TOKENS[0] and second.lease != first.lease
    assert not pool.releasing
    busy = await pool.acquire()  # still one at a time: nothing was freed twice
    assert isinstance(busy, Unavailable) and busy.reason == "busy"
