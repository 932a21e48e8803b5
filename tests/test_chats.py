"""Throwaway chats (issue 15 item 2; PROTOCOL.md section 6.4): none is left in the account.

The fake upstream keeps a chat for every accepted completion, as the real one does, until its
owner deletes it. Through the ``openai`` SDK: each answer's chat is deleted afterwards with
the token that made it (stream and not, guests and pooled tokens); a failed delete waits in
Redis and is retried; nothing is deleted while the WAF breaker is open; ``/metrics`` shows
what waits; ``ZAI_CHATS=keep`` deletes nothing; with ``ZAI_CREATE_CHATS`` each chat is first
created as the page does (``POST /api/v1/chats/new``), as a fake refusing chats it never made
requires, and the created chat is the one deleted. Then the issue's acceptance: 100 requests
over three replica processes sharing a redis-server, one SIGKILLed midway, and within a
minute the upstream holds no chat of ours.
"""

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from server.egress import _RECHECK as RECHECK
from tests.accounts import TOKENS
from tests.fake_upstream import FakeUpstream
from tests.processes import GatewayProcess
from tests.redis_server import RedisServer

OK = "stream_glm5_plain_thinking"
GUESTS = ("home", "guest_auth", OK)
EXPECTED = Path(__file__).resolve().parent / "expected"
HI = [{"role": "user", "content": "hi"}]


async def settled(fake, timeout: float = 10.0) -> float:
    """Seconds until the fake holds no chat (raises if it still holds some at ``timeout``)."""
    began = time.monotonic()
    while fake.chats:
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{len(fake.chats)} chat(s) left upstream after {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def forgotten(gw, timeout: float = 2.0) -> None:
    """Wait until the gateway's ledger holds no chat (raises if it still does at ``timeout``):
    the fake counts a chat deleted as it answers; the ledger forgets it once the gateway has
    read that answer, a moment later."""
    began = time.monotonic()
    while (left := await gw.services.chats.ledger.pending()) != 0:
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{left} chat(s) still pending after {timeout} s")
        await asyncio.sleep(0.02)


async def pending_metric(gw) -> float:
    reply = await AsyncHTTPClient().fetch(gw.url + "/metrics")
    found = re.search(rb"^zai_gateway_chats_pending_deletion (\S+)$", reply.body, re.M)
    assert found, "the gauge is missing"
    return float(found.group(1))


@pytest.mark.parametrize("stream", [False, True])
async def test_each_answers_chat_is_deleted_afterwards(gateway, stream):
    gw = await gateway(*GUESTS, zai_delete_guest_chats=True)
    async with gw.openai() as client:
        for _ in range(3):
            reply = await client.chat.completions.create(
                model="GLM-4.7", messages=HI, stream=stream
            )
            if stream:
                [chunk async for chunk in reply]
    chats = [r.query["token"] for r in gw.completions_seen()]
    assert len(chats) == 3
    await settled(gw.fake)
    deletes = [r for r in gw.fake.requests if r.method == "DELETE"]
    assert len(deletes) == 3 and len(gw.fake.deleted) == 3
    sent = {r.path.rsplit("/", 1)[1]: r.headers["Authorization"] for r in deletes}
    for seen in gw.completions_seen():  # each by the token that made it
        chat_id = seen.body.split(b'"chat_id":"')[1].split(b'"')[0].decode()
        assert sent[chat_id] == "Bearer " + seen.query["token"]
    chats = gw.services.chats
    for _ in range(100):  # struck out of the ledger just after the fake answered the delete
        if not chats._tasks and await chats.ledger.pending() == 0:
            break
        await asyncio.sleep(0.02)
    assert await chats.ledger.pending() == 0 and await pending_metric(gw) == 0
    assert not chats.open and not chats._tasks  # nothing held once all is deleted


async def test_pooled_tokens_chats_are_deleted_too(gateway):
    gw = await gateway(
        "home", "guest_auth_user_role", OK, zai_tokens=",".join(TOKENS), anonymous_mode=False
    )
    async with gw.openai() as client:
        for _ in range(3):
            await client.chat.completions.create(model="GLM-5.1", messages=HI)
    await settled(gw.fake)
    assert len(gw.fake.deleted) == 3


class SlowLink:
    """A TCP relay to ``port`` that holds what the client sends for ``delay`` s before passing
    it on (the replies come straight back): a Redis far enough away that a write the gateway
    did not wait for is plainly still on its way."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self._pumps: set[asyncio.Task] = set()

    async def start(self) -> int:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
            for pump in (self._pump(reader, up_writer, True), self._pump(up_reader, writer)):
                task = asyncio.ensure_future(pump)
                self._pumps.add(task)
                task.add_done_callback(self._pumps.discard)

        self.server = await asyncio.start_server(relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if held:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()
        for task in self._pumps:
            task.cancel()


async def test_a_completion_goes_upstream_only_once_its_chat_is_written_down(gateway):
    # A replica killed between the two would leave the chat in the account for good: no other
    # replica could know it. Redis is 0.2 s away: were the ledger's write not waited for, each
    # completion would reach the upstream well before its chat reached the ledger.
    server = RedisServer().start()
    link = SlowLink(server.port, 0.2)
    try:
        port = await link.start()
        gw = await gateway(
            "home", "guest_auth_user_role", OK, zai_tokens=",".join(TOKENS),
            anonymous_mode=False, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=5,
        )  # fmt: skip
        ledger_then: list[bool] = []
        keep_chat = gw.fake.keep_chat

        def arrived(seen) -> None:
            chat_id = json.loads(seen.body)["chat_id"]
            members = server.command("ZRANGE", gw.services.keys.chats, "0", "-1")
            ledger_then.append(any(m.startswith(chat_id + "\t") for m in members))
            keep_chat(seen)

        gw.fake.keep_chat = arrived
        async with gw.openai() as client:
            for _ in range(2):
                await client.chat.completions.create(model="GLM-5.1", messages=HI)
                stream = await client.chat.completions.create(
                    model="GLM-5.1", messages=HI, stream=True
                )
                async for _ in stream:
                    pass
        assert ledger_then == [True] * 4  # in Redis before the upstream heard of it, each time
        await settled(gw.fake)
        assert len(gw.fake.deleted) == 4
    finally:
        link.close()
        server.stop()


async def test_a_failed_delete_waits_in_redis_and_is_retried(gateway):
    gw = await gateway(*GUESTS, instance_ttl=0.6, zai_chat_retry=0.3, zai_delete_guest_chats=True)
    gw.fake.delete_failures = 2
    async with gw.openai() as client:
        await client.chat.completions.create(model="GLM-4.7", messages=HI)
    for _ in range(100):
        if any(r.method == "DELETE" for r in gw.fake.requests):
            break
        await asyncio.sleep(0.02)
    assert await pending_metric(gw) == 1  # it failed: it waits
    await settled(gw.fake)
    assert len([r for r in gw.fake.requests if r.method == "DELETE"]) == 3
    await forgotten(gw)


async def test_a_chat_already_gone_counts_as_deleted(gateway):
    gw = await gateway(*GUESTS, zai_delete_guest_chats=True)
    gw.fake.keep_chat = lambda seen: None  # the upstream never kept it: the delete gets 404
    async with gw.openai() as client:
        await client.chat.completions.create(model="GLM-4.7", messages=HI)
    await forgotten(gw)
    assert len([r for r in gw.fake.requests if r.method == "DELETE"]) == 1


async def test_no_delete_while_the_waf_breaker_is_open(gateway):
    gw = await gateway(
        *GUESTS, pace=0.05, instance_ttl=0.6, zai_chat_retry=0.3, zai_delete_guest_chats=True
    )
    async with gw.openai() as client:
        stream = await client.chat.completions.create(model="GLM-4.7", messages=HI, stream=True)
        await gw.services.egress.breaker.trip()  # blocked while the answer streams, as by
        await asyncio.sleep(RECHECK)  # another replica: seen once this one looks again
        [chunk async for chunk in stream]
    await asyncio.sleep(1.0)  # several sweeps
    assert [r for r in gw.fake.requests if r.method == "DELETE"] == []
    assert len(gw.fake.chats) == 1 and await gw.services.chats.ledger.pending() == 1
    await gw.services.redis.delete(gw.services.keys.waf("direct"))  # the block is lifted
    await settled(gw.fake)


async def test_guests_chats_are_left_by_default(gateway):
    """A guest serves one request and is never used again: deleting its chat would only be
    one more upstream call (and its token would wait in Redis meanwhile)."""
    gw = await gateway(*GUESTS)
    async with gw.openai() as client:
        for _ in range(3):
            await client.chat.completions.create(model="GLM-4.7", messages=HI)
    await asyncio.sleep(0.3)
    assert len(gw.fake.chats) == 3
    assert [r for r in gw.fake.requests if r.method == "DELETE"] == []
    assert await gw.services.chats.ledger.pending() == 0
    assert await gw.services.redis.keys(gw.services.keys.chat("*")) == []


async def test_keep_mode_deletes_nothing(gateway):
    gw = await gateway(*GUESTS, zai_chats="keep")
    async with gw.openai() as client:
        await client.chat.completions.create(model="GLM-4.7", messages=HI)
    await asyncio.sleep(0.3)
    assert len(gw.fake.chats) == 1 and gw.services.chats is None
    assert [r for r in gw.fake.requests if r.method == "DELETE"] == []


def body_chat_id(seen) -> str:
    return json.loads(seen.body)["chat_id"]


@pytest.mark.parametrize("stream", [False, True])
async def test_each_chat_is_created_first_when_the_upstream_requires_it(gateway, stream):
    gw = await gateway(*GUESTS, zai_create_chats=True, zai_delete_guest_chats=True)
    gw.fake.create_required = True  # a completion naming a chat it never made gets a 404
    expected = json.loads((EXPECTED / f"{OK}.json").read_text())["content"]
    async with gw.openai() as client:
        for _ in range(2):
            reply = await client.chat.completions.create(
                model="GLM-4.7", messages=HI, stream=stream
            )
            if stream:
                text = "".join([c.choices[0].delta.content or "" async for c in reply if c.choices])
            else:
                text = reply.choices[0].message.content
            assert text == expected
    creates = [r for r in gw.fake.requests if r.method == "POST" and r.path.endswith("/new")]
    completions = gw.completions_seen()
    assert len(creates) == 2 and len(completions) == 2
    for create, seen in zip(creates, completions, strict=True):
        assert create.at <= seen.at  # made before its completion, by the same token
        assert create.headers["Authorization"] == "Bearer " + seen.query["token"]
        assert create.headers["X-FE-Version"] == seen.headers["X-FE-Version"]
        chat = json.loads(create.body)["chat"]
        first = chat["history"]["messages"][chat["history"]["currentId"]]
        assert first["content"] == "hi" and first["role"] == "user"
        assert chat["models"] == [json.loads(seen.body)["model"]]
    assert [body_chat_id(s) for s in completions] == list(gw.fake.created)
    await settled(gw.fake)
    assert sorted(gw.fake.deleted) == sorted(gw.fake.created)  # the created ones are deleted


async def test_an_upstream_requiring_creation_refuses_a_chat_it_never_made(gateway):
    """The other half of the test above: the fake's mode bites without ZAI_CREATE_CHATS."""
    gw = await gateway(*GUESTS)
    gw.fake.create_required = True
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="GLM-4.7", messages=HI)
    assert not [r for r in gw.fake.requests if r.path.endswith("/new")]
    assert gw.completions_seen() and not gw.fake.created


# Acceptance: three replicas, one killed midway


def chat_replica(redis_url: str, upstream: str, log_dir: Path) -> GatewayProcess:
    return GatewayProcess(
        log_dir,
        ZAI_BASE_URL=upstream,
        REDIS_URL=redis_url,
        INSTANCE_TTL="1.5",
        ZAI_CHAT_RETRY="1",
        ZAI_DELETE_GUEST_CHATS="true",
    )


@pytest.mark.timeout(150)
async def test_100_requests_over_3_replicas_one_killed_leave_no_chat(io_loop, tmp_path):
    redis = RedisServer().start()
    fake = FakeUpstream(*GUESTS, pace=0.03)  # ~1.4 s per answer: many in flight at the kill
    base = await fake.start()
    replicas = [chat_replica(redis.url, base, tmp_path) for _ in range(3)]
    clients: list[openai.AsyncOpenAI] = []
    try:
        await asyncio.gather(*(r.ready() for r in replicas))
        clients += [r.client() for r in replicas]
        outcomes: list[str] = []

        async def one(client: openai.AsyncOpenAI) -> None:
            try:
                await client.chat.completions.create(model="GLM-4.7", messages=HI)
                outcomes.append("ok")
            except openai.APIError:
                outcomes.append("failed")  # the killed replica's requests

        first = [asyncio.ensure_future(one(clients[i % 3])) for i in range(50)]
        deadline = time.monotonic() + 20
        while len(fake.chats) < 9 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # until answers stream on every replica
        replicas[0].proc.send_signal(signal.SIGKILL)
        replicas[0].proc.wait(5)
        killed_at, open_then = time.monotonic(), set(fake.chats)
        await asyncio.gather(*first)
        await asyncio.gather(*(one(clients[1 + i % 2]) for i in range(50)))
        assert len(outcomes) == 100 and outcomes.count("ok") >= 60
        made = len([r for r in fake.requests if r.path.endswith("/chat/completions")])
        assert made >= 60 and len(open_then) >= 9  # answers in flight on all three at the kill
        await settled(fake, timeout=60)
        took, failed = time.monotonic() - killed_at, outcomes.count("failed")
        print(f"{made} chats made, {failed} requests failed, none left {took:.1f} s after the kill")
        assert open_then <= set(fake.deleted)  # the killed replica's too, by the others
    finally:
        for client in clients:
            await client.close()
        for replica in replicas:
            replica.stop()
        await fake.close()
        redis.stop()
