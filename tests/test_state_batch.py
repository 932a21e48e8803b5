"""The write-behind batch (``state.batch``): what many requests write off their path costs
one round trip, and a failure reaches every caller. On a real redis-server, whose counter of
reads processed says how many round trips arrived."""

import asyncio

import pytest
from redis.exceptions import RedisError

from state.batch import WriteBehind
from state.chats import ChatLedger
from state.connection import connect
from state.keys import Keys
from tests.redis_server import RedisServer, free_port


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
        ids = [f"chat-{i}" for i in range(30)]
        await asyncio.gather(*(ledger.open(i, "", f"tid-{i}", 30) for i in ids))
        assert await reads(client) - before == 2  # the batch and the INFO
        assert await ledger.pending() == 30
        assert await client.hget(keys.chat("chat-7"), "token_id") == "tid-chat-7"
        before = await reads(client)
        await asyncio.gather(*(ledger.done(i) for i in ids))
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
        assert done[0] is None and "not an integer" in str(done[1])
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
