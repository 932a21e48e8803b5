"""Upstream faults, client hang-ups and a Redis that dies under load: what the client sees,
and that nothing hangs or leaks. The upstream's own faults (timeouts, hang-ups, kept and stale
connections) are checked on both transports (``UPSTREAM_TRANSPORT`` native and impersonate)."""

import asyncio
import random
import signal
import time

import openai
import pytest

from tests.accounts import pool_gateway
from tests.conftest import API_KEY
from tests.recorded import expected
from tests.redis_server import RedisServer

BASE = ("home", "guest_auth")
OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]


async def test_timeout_before_headers_is_a_504_in_bounded_time(gateway, transport, exchanges):
    gw = await gateway(
        *BASE,
        OK,
        stall_headers=True,
        upstream_header_timeout=0.3,
        upstream_retries=1,
        upstream_transport=transport.name,
    )
    started = time.monotonic()
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 504 and info.value.code == "timeout"
    assert "no response headers within 0.3 s" in info.value.message
    assert time.monotonic() - started < 3
    assert len(gw.completions_seen()) == 2
    assert exchanges.left_open() == 0


async def test_timeout_between_frames(gateway, transport, exchanges):
    gw = await gateway(
        *BASE,
        OK,
        stall_after=10,
        upstream_idle_timeout=0.3,
        upstream_retries=1,
        upstream_transport=transport.name,
    )
    async with gw.openai() as client:
        stream = await client.chat.completions.create(model="GLM-4.5", messages=HELLO, stream=True)
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
        assert "sent nothing for 0.3 s" in info.value.message
        with pytest.raises(openai.APIStatusError) as info:  # nothing sent yet: retried, 504
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 504
    assert len(gw.completions_seen()) == 3
    await asyncio.sleep(0.1)
    assert exchanges.left_open() == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_frames_are_skipped_and_the_answer_is_whole(gateway, stream):
    gw = await gateway(*BASE, "stream_malformed_frames")
    want = expected(OK)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO, stream=stream)
        if stream:
            chunks = [c async for c in reply]
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            content = reply.choices[0].message.content
    assert content == want["content"]


async def raw_request(port: int, hang_up_after: int) -> None:
    """A client that sends a streaming request and hangs up after some bytes (0: at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"model": "GLM-4.5", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    await writer.drain()
    got = b""
    while len(got) < hang_up_after and b"[DONE]" not in got:
        data = await asyncio.wait_for(reader.read(512), 10)
        if not data:
            break
        got += data
    writer.transport.abort()


@pytest.mark.timeout(60)
async def test_clients_hanging_up_at_random_points_leak_nothing(gateway, transport, exchanges):
    gw = await pool_gateway(
        gateway,
        pace=0.02,
        pool_max_concurrency=0,
        # The chat deletes' kept upstream connections are tasks of the fake's server in this
        # process; tests/test_chats.py checks the deletes leave nothing behind.
        zai_chats="keep",
        upstream_transport=transport.name,
    )
    port = int(gw.url.rsplit(":", 1)[1])
    await asyncio.sleep(0.2)
    baseline = len(asyncio.all_tasks())
    rng = random.Random(7)
    await asyncio.gather(
        *(raw_request(port, rng.choice([0, 1, 300, 900, 2500])) for _ in range(24))
    )
    deadline = time.monotonic() + 10
    while (gw.services.active or exchanges.left_open()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not gw.services.active and exchanges.left_open() == 0
    assert sum(row.leases for row in await gw.services.pool.status()) == 0
    assert gw.fake.streams_completed + gw.fake.streams_aborted == len(gw.completions_seen())
    await asyncio.sleep(0.2)
    assert len(asyncio.all_tasks()) <= baseline


@pytest.mark.timeout(90)
async def test_redis_killed_and_restarted_under_load(gateway, tmp_path):
    redis = RedisServer().start()
    try:
        gw = await pool_gateway(
            gateway,
            redis_url=redis.url,
            instance_ttl=0.6,
            redis_timeout=0.5,
            pool_max_concurrency=0,
        )
        outcomes: list[tuple[float, int, float]] = []  # (start, status, seconds)
        restarted = float("inf")  # when Redis was started again (the clock of a loaded host)

        async def worker() -> None:
            async with gw.openai() as client:
                while time.monotonic() < restarted + 3:
                    start = time.monotonic()
                    try:
                        await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
                        status = 200
                    except openai.APIStatusError as exc:
                        status = exc.status_code
                        assert exc.code in ("state_unavailable", "pool_exhausted"), exc.message
                    outcomes.append((start, status, time.monotonic() - start))
                    await asyncio.sleep(0.01)

        async def chaos() -> None:
            nonlocal restarted
            await asyncio.sleep(1)
            redis.proc.send_signal(signal.SIGKILL)
            redis.proc.wait(5)
            await asyncio.sleep(1)
            redis.spawn()  # same port and directory, empty
            restarted = time.monotonic()

        await asyncio.gather(*(worker() for _ in range(6)), chaos())
        assert max(seconds for _, _, seconds in outcomes) < 3  # nothing hangs
        statuses = {status for _, status, _ in outcomes}
        assert statuses <= {200, 503} and 503 in statuses
        late = [status for start, status, _ in outcomes if start - restarted > 1.5]
        assert late and set(late) == {200}  # recovered by itself, pool reloaded
        # The last answers' releases go out in a batch a loop turn after them (release_soon).
        await gw.services.pool.flush()
        rows = await gw.services.pool.status()
        assert sum(row.leases for row in rows) == 0 and {r.state for r in rows} == {"active"}
    finally:
        redis.stop()


async def test_upstream_connections_are_kept_alive_and_stale_ones_replaced(
    gateway, transport, exchanges
):
    # static models, chats kept: the catalogue read and the chat deletes are requests too
    gw = await gateway(
        *BASE, OK, zai_models="static", zai_chats="keep", upstream_transport=transport.name
    )
    async with gw.openai() as client:
        for _ in range(3):
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        before = {r.connection for r in gw.fake.requests}
        # home, /api/config (read once: is the captcha on?), 3 guests, 3 answers
        assert len(gw.fake.requests) == 8 and len(before) <= 2
        await gw.fake._server.close_all_connections()  # the upstream drops idle connections
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"  # the stale one was replaced, unseen
    after = {r.connection for r in gw.fake.requests[8:]}
    assert after and not after & before
    await asyncio.sleep(0.05)
    assert exchanges.left_open() == 0


async def test_a_replica_stopping_mid_refill_leaves_no_sign_in_open(gateway, exchanges):
    # The guest refill's sign-ins were left running when a replica stopped; once its event
    # loop closed they were dropped with their upstream connections still open.
    gw = await gateway(*BASE, OK, guest_reserve=8)
    gw.fake.stall_paths.add("/api/v1/auths/")
    await gw.services.redis.delete(gw.services.keys.guests)
    gw.services.guests.refill_soon()
    deadline = time.monotonic() + 5
    while exchanges.left_open() < 2:  # sign-ins waiting on the upstream
        assert time.monotonic() < deadline, "no sign-in reached the upstream"
        await asyncio.sleep(0.02)
    await gw.services.stop()
    assert exchanges.left_open() == 0
