"""A real nginx (``deploy/nginx.conf``) in front of three replicas on one real Redis server.

Through it, with the openai SDK: plain and streamed answers; a stream's first event reaches
the client while the upstream is still holding the rest (the gateway's ``X-Accel-Buffering:
no``; the same config with gzip on for streams and that header ignored holds it back, so the
check can fail); one replica SIGKILLed with streams and plain answers open: exactly the
streams it carried end with an exception in the client, the plain answers it held are sent
again to another replica, every other stream and every new request succeeds, and the dead
replica's leases and registration lapse in Redis.
"""

import asyncio
import contextlib
import re

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.accounts import ADMIN
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream
from tests.nginx import CONFIG, Nginx, nginx_binary
from tests.processes import GatewayProcess
from tests.redis_server import RedisServer
from tests.test_replicas import TTL, replica

MODEL = "GLM-5.1"
HI = [{"role": "user", "content": "hi"}]
HELD = 3  # the fake upstream sends this many events of each stream, then holds it open
FULL = (  # the cassette's answer, as a client reads it
    "Hi there! I'm GLM, a large language model trained by Z.ai. How can I assist you today? "
    "Whether you have questions or just want to chat, I'm here to help. "
    "What would you like to discuss?"
)
CLIENT_ERRORS = (openai.APIError,)


@pytest.fixture
def balanced(io_loop, tmp_path):
    """Redis, the fake upstream, three replicas and a function that starts nginx before them."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install -y nginx)")
    redis = RedisServer().start()
    fake = FakeUpstream("home", "guest_auth_user_role", "stream_glm5_plain_thinking")
    base = io_loop.run_sync(fake.start)
    replicas = [replica(redis.url, base, tmp_path) for _ in range(3)]
    started: list[Nginx] = []

    def balancer(name: str, config: str | None = None) -> Nginx:
        lb = Nginx(tmp_path / name, [r.port for r in replicas], config).start(binary)
        started.append(lb)
        return lb

    try:
        io_loop.run_sync(lambda: asyncio.gather(*(r.ready() for r in replicas)), timeout=60)
        yield redis, fake, replicas, balancer
    finally:
        for lb in started:
            lb.stop()
        for r in replicas:
            r.stop()
        io_loop.run_sync(fake.close)
        redis.stop()


def client(lb: Nginx) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=lb.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


async def answer(lb: Nginx) -> str:
    async with client(lb) as c:
        reply = await c.chat.completions.create(model=MODEL, messages=HI)
    return reply.choices[0].message.content


async def streamed(lb: Nginx) -> str:
    async with client(lb) as c:
        stream = await c.chat.completions.create(model=MODEL, messages=HI, stream=True)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])


async def first_event_seen(lb: Nginx, fake: FakeUpstream, patience: float) -> str:
    """When the stream's first event reached the client: while the upstream held the rest
    of the stream, or only after the upstream had finished it."""
    fake.stall_after = HELD
    before = fake.streams_completed
    async with client(lb) as c:

        async def first_event():
            stream = await c.chat.completions.create(model=MODEL, messages=HI, stream=True)
            chunks = stream.__aiter__()
            chunk = await chunks.__anext__()
            held = fake.streams_completed == before
            return ("while the upstream held" if held else "after the upstream"), chunk, chunks

        first = asyncio.ensure_future(first_event())
        # the upstream is let go once the client saw an event, or after a while anyway (a
        # proxy that buffers passes nothing before the end, not even the headers)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), patience)
        fake.stall_after = None
        when, chunk, chunks = await first
        rest = [chunk async for chunk in chunks]
        text = "".join(c.choices[0].delta.content or "" for c in [chunk, *rest])
    assert text == FULL and fake.streams_completed == before + 1
    return when


@pytest.mark.timeout(180)
async def test_answers_and_streams_through_nginx_first_event_not_held(balanced):
    _, fake, replicas, balancer = balanced
    lb = balancer("nginx")
    assert await answer(lb) == FULL
    assert await streamed(lb) == FULL
    # the first event passes while the upstream still holds the rest of the stream
    assert await first_event_seen(lb, fake, 20) == "while the upstream held"
    # the plain answers went round the three replicas
    for _ in range(6):
        assert await answer(lb) == FULL
    served = {re.search(r"upstream=(\S+)", line).group(1) for line in lb.access()}
    assert served == {f"127.0.0.1:{r.port}" for r in replicas}, lb.access()

    # the control: a proxy that buffers (gzip on for streams, the gateway's header ignored)
    # passes the first event only once the upstream is done: the check above can fail
    buffering = CONFIG.read_text().replace(
        "proxy_pass http://zai_gateway;",
        "proxy_pass http://zai_gateway;\n"
        "            gzip on;\n"
        "            gzip_types text/event-stream;\n"
        "            proxy_ignore_headers X-Accel-Buffering;",
    )
    held = balancer("nginx-buffering", buffering)
    assert await first_event_seen(held, fake, 3) == "after the upstream"


async def inflight(replica: GatewayProcess) -> int:
    reply = await AsyncHTTPClient().fetch(replica.url + "/metrics")
    return int(float(re.search(rb"^zai_gateway_inflight_requests (\S+)", reply.body, re.M)[1]))


def leases(redis: RedisServer) -> int:
    tokens = redis.command("HKEYS", "zai:{pool}:tokens")
    return sum(redis.command("ZCARD", f"zai:{{pool}}:leases:{token}") for token in tokens)


def instances(redis: RedisServer) -> int:
    return redis.command("ZCARD", "zai:{pool}:instances")


@pytest.mark.timeout(180)
async def test_a_replica_killed_under_load(balanced):
    redis, fake, replicas, balancer = balanced
    lb = balancer("nginx")
    fake.stall_after = HELD
    # six streams open, each has its first event, the upstream holds the rest
    clients = [client(lb) for _ in range(6)]
    streams = [
        await c.chat.completions.create(model=MODEL, messages=HI, stream=True) for c in clients
    ]
    firsts = [await s.__aiter__().__anext__() for s in streams]
    assert all(f.choices[0].delta.role == "assistant" for f in firsts)
    streams_on = [await inflight(r) for r in replicas]
    assert sum(streams_on) == 6, streams_on
    # and six plain answers in flight, held too (nginx has sent each to a replica)
    plain = [asyncio.ensure_future(answer(lb)) for _ in range(6)]
    for _ in range(200):
        totals = [await inflight(r) for r in replicas]
        if sum(totals) == 12:
            break
        await asyncio.sleep(0.1)
    assert sum(totals) == 12, totals
    assert leases(redis) == 12
    answers_on = [total - on for total, on in zip(totals, streams_on, strict=True)]
    # the victim carries streams and plain answers both (round robin: one of them does)
    index = max(range(3), key=lambda i: (min(streams_on[i], answers_on[i]), streams_on[i]))
    assert streams_on[index] and answers_on[index], (streams_on, answers_on)
    victim = replicas[index]
    others = [r for r in replicas if r is not victim]

    async def rest(stream) -> str:
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    reading = [asyncio.ensure_future(rest(s)) for s in streams]
    victim.proc.kill()
    victim.proc.wait(10)
    # the streams the victim carried end with an error while the upstream still holds all
    done: set = set()
    pending = set(reading)
    for _ in range(40):  # up to 20 s, not a hang
        if len(done) >= streams_on[index]:
            break
        finished, pending = await asyncio.wait(pending, timeout=0.5)
        done |= finished
    assert len(done) == streams_on[index], (streams_on, done)
    assert all(isinstance(task.exception(), CLIENT_ERRORS) for task in done)
    assert fake.streams_completed == 0 and not any(task.done() for task in plain)

    # its plain answers in flight went to the others (no answer had begun: sent again), and
    # new requests while it lies dead are all served by the others, plain and streamed
    new = [asyncio.ensure_future(answer(lb) if i % 2 else streamed(lb)) for i in range(9)]
    await asyncio.sleep(0.5)
    fake.stall_after = None  # the upstream lets everything finish
    results = await asyncio.wait_for(asyncio.gather(*pending, *plain, *new), 60)
    assert results == [FULL] * len(results)
    assert len(results) == 6 - streams_on[index] + 6 + 9
    for c in clients:
        await c.close()
    assert sum([await inflight(r) for r in others]) == 0
    # nginx's access log: each plain answer the victim held was sent again to another replica
    # (so was any new request that tried the dead one first: its port refuses at once)
    moved = [line for line in lb.access() if f"upstream=127.0.0.1:{victim.port}, " in line]
    assert len(moved) >= answers_on[index], lb.access()
    assert all(" 200 " in line and "upstream_status=502, 200" in line for line in moved)

    # the dead replica's leases and registration lapse; the pool says so too
    for _ in range(int(TTL * 40)):
        if leases(redis) == 0 and instances(redis) == 2:
            break
        await asyncio.sleep(0.1)
    assert leases(redis) == 0
    live = (await others[0].admin("/v1/instances", ADMIN))["instances"]
    assert sorted(int(row["pid"]) for row in live) == sorted(r.proc.pid for r in others)
    status = await others[1].admin("/v1/token-pool/status", ADMIN)
    assert sum(row["leases"] for row in status["tokens"]) == 0
