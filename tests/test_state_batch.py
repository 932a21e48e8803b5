"""The write-behind batch (``state.batch``): what many requests write off their path costs
one round trip, and a failure reaches every caller. On a real redis-server, whose counter of
reads processed says how many round trips arrived."""

import asyncio

import pytest
from redis.exceptions import RedisError

from state.batch import WriteBehind
from state.chats import ChatLedger, PendingChat
from state.client_keys import ClientKeys, parse_secret
from state.connection import connect
from state.keys import Keys
from state.pool import Pick, TokenPool
from tests.redis_server import RedisServer, free_port
from tests.test_state_pool import TOKENS, alive, make_pool


@pytest.fixture
def server():
    server = RedisServer().start()
    yield server
    server.stop()


async def reads(client) -> int:
    return int((await client.info("stats"))["total_reads_processed"])


async def test_ledger_writes_of_many_requests_are_one_round_trip(server):
    client = connect(server.url, 0.5)
    try:
        keys = Keys("b:")
        ledger = ChatLedger(client, keys, WriteBehind(client))
        before = await reads(client)
        chats = [PendingChat(f"chat-{i}", "", f"tid-{i}") for i in range(30)]
        await asyncio.gather(*(ledger.open(chat, 30) for chat in chats))
        assert await reads(client) - before == 2  # the batch and the INFO
        assert await ledger.pending() == 30
        before = await reads(client)
        await asyncio.gather(*(ledger.done(chat) for chat in chats))
        assert await reads(client) - before == 2
        assert await ledger.pending() == 0 and await client.keys(keys.chat("*")) == []
    finally:
        await client.aclose()


async def test_a_write_queued_while_a_batch_is_in_flight_goes_in_the_next(server):
    client = connect(server.url, 0.5)
    try:
        batch = WriteBehind(client)
        first = batch.add(lambda pipe: pipe.set("b:first", 1))
        await asyncio.sleep(0)  # the first batch leaves with one entry
        second = batch.add(lambda pipe: pipe.set("b:second", 2))
        await asyncio.gather(first, second)
        assert await client.mget("b:first", "b:second") == ["1", "2"]
    finally:
        await client.aclose()


async def test_a_failed_command_fails_only_its_own_entry(server):
    client = connect(server.url, 0.5)
    try:
        batch = WriteBehind(client)
        await client.set("b:text", "not a number")
        good = batch.add(lambda pipe: pipe.incr("b:count"))
        bad = batch.add(lambda pipe: pipe.incr("b:text"))
        done = await asyncio.gather(good, bad, return_exceptions=True)
        assert done[0] == [1] and "not an integer" in str(done[1])  # each hears its own
        assert await client.get("b:count") == "1"
    finally:
        await client.aclose()


async def test_unreachable_redis_fails_every_entry():
    client = connect(f"redis://127.0.0.1:{free_port()}/0", 0.2)  # nothing listens there
    try:
        batch = WriteBehind(client)
        entries = [batch.add(lambda pipe: pipe.set("b:x", 1)) for _ in range(3)]
        done = await asyncio.gather(*entries, return_exceptions=True)
        assert all(isinstance(e, RedisError) for e in done)
        await batch.flush()  # nothing left in flight
    finally:
        await client.aclose()


async def test_picks_and_the_releases_queued_before_them_share_one_round_trip(server):
    # With one slot per token, a pick can only succeed behind the release queued before it:
    # the batch keeps them in order, and twenty requests' picks and releases cost two trips.
    client = connect(server.url, 0.5)
    try:
        pool = make_pool(client, max_concurrency=1)
        await alive(pool, TOKENS)
        first = await asyncio.gather(*(pool.acquire() for _ in TOKENS))
        assert all(isinstance(p, Pick) for p in first)
        before = await reads(client)
        for pick in first:
            pool.release_soon(pick.lease)  # kept-alive clients' next requests, right behind
        again = await asyncio.gather(*(pool.acquire() for _ in TOKENS))
        assert all(isinstance(p, Pick) for p in again)  # none overtook the releases
        assert await reads(client) - before == 2  # releases and picks in one batch, the INFO
        assert sorted(p.lease.token_id for p in again) == sorted(p.lease.token_id for p in first)
    finally:
        await client.aclose()


async def test_a_pick_whose_caller_hung_up_is_given_back(server):
    client = connect(server.url, 0.5)
    try:
        pool = make_pool(client, max_concurrency=1)
        await alive(pool, TOKENS[:1])
        gone = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)  # queued: the batch leaves on the next loop turn
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await pool.batch.flush()
        for _ in range(40):  # the lease it may have taken is revoked once Redis answered
            if not pool.unsettled:
                break
            await asyncio.sleep(0.05)
        assert isinstance(await pool.acquire(), Pick)  # the one slot is free again
    finally:
        await client.aclose()


async def _pool_and_keys(client) -> tuple[TokenPool, ClientKeys]:
    """A pool with one live token and the client keys, on ``client``."""
    pool = make_pool(client)
    await alive(pool, TOKENS[:1])
    return pool, ClientKeys(client, Keys("t:"))


async def test_a_key_check_rides_with_the_token_pick_in_one_round_trip(server):
    # An issued key's check and the token pick touch different hash tags ({k:<id>}, {pool}),
    # so they are two scripts; a request still pays one round trip for both.
    client = connect(server.url, 0.5)
    try:
        pool, keys = await _pool_and_keys(client)
        _, secret = await keys.create(name="team", rpm=2)
        kid, digest = parse_secret(secret)  # type: ignore[misc]
        for n, left in enumerate((1, 0, 0)):  # the first run loads the scripts
            check = keys.check(kid, digest, "GLM-4.5", 1, 10, f"req-{n}")
            before = await reads(client)
            pick, reply = await pool.acquire_with(None, check.call)
            if n:
                assert await reads(client) - before == 2  # the pick with the check, the INFO
            admission = check.answered(reply)
            assert isinstance(pick, Pick) and check.admission is admission
            assert admission.refused == ("" if n < 2 else "rpm")
            assert [lim.remaining for lim in admission.limits] == [left]
            await pool.release(pick.lease, "spare")
    finally:
        await client.aclose()


async def test_a_failed_check_is_raised_where_it_is_read_and_the_pick_still_counts(server):
    client = connect(server.url, 0.5)
    try:
        pool, keys = await _pool_and_keys(client)
        await client.set(Keys("t:").client_key("0123456789ab"), "not a hash")  # WRONGTYPE
        check = keys.check("0123456789ab", "x", "GLM-4.5", 1, 10, "req")
        pick, reply = await pool.acquire_with(None, check.call)
        assert isinstance(pick, Pick) and isinstance(reply, RedisError)
        with pytest.raises(RedisError):
            check.answered(reply)
        assert check.admission is None
        await pool.release(pick.lease, "spare")
    finally:
        await client.aclose()


async def test_a_chat_is_one_command_each_way_and_a_failed_one_keeps_its_count(redis):
    keys = Keys("b:")
    ledger = ChatLedger(redis, keys, WriteBehind(redis))
    ok, failed = PendingChat("chat-ok", "", "tid-1"), PendingChat("chat-bad", "guest.jwt", "")
    await asyncio.gather(ledger.open(ok, 30), ledger.open(failed, 30))
    assert await redis.keys(keys.chat("*")) == []  # who owns each is in its member
    await ledger.later(failed, 0)  # its delete failed: due at once, one failure counted
    [claimed] = await ledger.claim(10, 30)
    assert (claimed.chat_id, claimed.guest, claimed.token_id, claimed.tries) == (
        "chat-bad",
        "guest.jwt",
        "",
        1,
    )
    assert 0 < await redis.ttl(keys.chat("chat-bad")) <= 86_400
    await asyncio.gather(ledger.done(ok), ledger.done(claimed))
    assert await ledger.pending() == 0 and await redis.keys(keys.chat("*")) == []


async def test_a_chat_written_down_in_the_older_layout_is_still_swept(redis):
    # Replicas of the previous release wrote the bare chat id, its owner in a hash.
    keys = Keys("b:")
    ledger = ChatLedger(redis, keys, WriteBehind(redis))
    await redis.hset(keys.chat("old-chat"), mapping={"guest": "", "token_id": "tid-9"})
    await redis.zadd(keys.chats, {"old-chat": 1})
    [claimed] = await ledger.claim(10, 30)
    assert (claimed.chat_id, claimed.token_id, claimed.member) == ("old-chat", "tid-9", "old-chat")
    await ledger.done(claimed)
    assert await ledger.pending() == 0 and await redis.keys(keys.chat("*")) == []
