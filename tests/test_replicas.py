"""Three gateway processes, one real redis-server, one cassette upstream: one pool.

Requests spread over the replicas rotate evenly over the tokens; a token that fails on one
replica is skipped by the others while it cools down; a replica killed with SIGKILL in the
middle of a stream leaves no lease and no registration once the TTLs pass; ``redis-cli``
shows what the README says; a frozen Redis costs a fast 503, and service comes back by
itself.
"""

import asyncio
import collections
import contextlib
import signal
import time
from pathlib import Path

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.accounts import ADMIN, TOKENS
from tests.fake_upstream import FakeUpstream
from tests.processes import GatewayProcess
from tests.redis_server import RedisServer

TTL = 1.5


def replica(redis_url: str, upstream: str, log_dir: Path, **extra: str) -> GatewayProcess:
    return GatewayProcess(
        log_dir,
        ADMIN_TOKEN=ADMIN,
        ZAI_BASE_URL=upstream,
        REDIS_URL=redis_url,
        ZAI_TOKENS=",".join(TOKENS),
        ANONYMOUS_MODE="false",
        INSTANCE_TTL=str(TTL),
        LEASE_TTL=str(TTL),
        POOL_COOLDOWN_BASE="60",
        POOL_MAX_CONCURRENCY="0",
        **extra,
    )


@pytest.fixture
def cluster(io_loop, tmp_path):
    redis = RedisServer().start()
    fake = FakeUpstream("home", "guest_auth_user_role", "stream_glm5_plain_thinking")
    base = io_loop.run_sync(fake.start)
    replicas = [replica(redis.url, base, tmp_path) for _ in range(3)]
    yield redis, fake, replicas
    codes = [replica.stop() for replica in replicas]
    logs = [replica.text() for replica in replicas]
    io_loop.run_sync(fake.close)
    redis.stop()
    for code, log in zip(codes, logs, strict=True):
        assert code in (0, -signal.SIGKILL), f"exit {code}:\n{log[-3000:]}"


def used(fake: FakeUpstream) -> collections.Counter:
    return collections.Counter(
        r.query["token"] for r in fake.requests if r.path.endswith("/chat/completions")
    )


async def ask(replica: GatewayProcess) -> str:
    async with replica.client() as client:
        reply = await client.chat.completions.create(
            model="GLM-5.1", messages=[{"role": "user", "content": "hi"}]
        )
    return reply.choices[0].message.content


@pytest.mark.timeout(120)
async def test_three_replicas_share_one_pool(cluster):
    redis, fake, replicas = cluster
    await asyncio.gather(*(r.ready() for r in replicas))

    # one rotation: 30 requests spread over 3 replicas -> 10 per token
    for i in range(30):
        assert (await ask(replicas[i % 3])).startswith("Hi there!")
    assert sorted(used(fake).values()) == [10, 10, 10]
    # the front-end version was read from the home page once, for all three replicas
    assert [r.path for r in fake.requests].count("/") == 1
    rotation = redis.cli("ZRANGE", "zai:{pool}:rotation", "0", "-1", "WITHSCORES").split()
    assert len(rotation) == 6 and sorted(int(s) for s in rotation[1::2])[-1] == 30

    # a token rate-limited on replica A cools down for B and C too
    fake.fail_tokens[TOKENS[0]] = 429
    before = used(fake)[TOKENS[0]]
    for _ in range(3):  # the rotation reaches TOKENS[0] within 3 requests
        await ask(replicas[0])
    assert used(fake)[TOKENS[0]] == before + 1
    for i in range(9):
        await ask(replicas[1 + i % 2])
    assert used(fake)[TOKENS[0]] == before + 1
    cooling = redis.cli("ZRANGE", "zai:{pool}:cooldown", "0", "-1").split()
    assert len(cooling) == 1
    assert redis.cli("HGET", f"zai:{{pool}}:token:{cooling[0]}", "failures").strip() == "1"
    status = await replicas[2].admin("/v1/token-pool/status", ADMIN)
    assert status["summary"] == {"active": 2, "cooling": 1, "dead": 0, "pending": 0}
    fake.fail_tokens.clear()

    # every replica is registered; redis-cli lists them
    instances = redis.cli("ZRANGE", "zai:{pool}:instances", "0", "-1").split()
    assert len(instances) == 3
    assert len((await replicas[1].admin("/v1/instances", ADMIN))["instances"]) == 3

    # SIGKILL mid-stream leaves nothing behind once the TTLs pass
    fake.pace = 0.2
    victim = replicas[0]
    async with victim.client() as client:
        stream = await client.chat.completions.create(
            model="GLM-5.1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in stream:
            break
        assert any(
            redis.cli("ZCARD", f"zai:{{pool}}:leases:{tid}").strip() != "0"
            for tid in redis.cli("HKEYS", "zai:{pool}:tokens").split()
        )
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        with contextlib.suppress(openai.APIError, OSError):
            async for _ in stream:
                pass
    await asyncio.sleep(TTL + 0.5)
    assert redis.cli("KEYS", "zai:{pool}:leases:*").split() == []
    live = (await replicas[1].admin("/v1/instances", ADMIN))["instances"]
    assert len(live) == 2 and str(victim.proc.pid) not in [row["pid"] for row in live]
    assert redis.cli("KEYS", f"zai:{{pool}}:instance:*:{victim.proc.pid}:*").split() == []
    fake.pace = 0

    # no full token in any replica's log
    for replica in replicas:
        text = replica.text()
        assert not any(token in text for token in TOKENS)


@pytest.mark.timeout(60)
async def test_frozen_redis_costs_a_fast_503_and_service_returns(cluster):
    redis, _, replicas = cluster
    await asyncio.gather(*(r.ready() for r in replicas))
    assert (await ask(replicas[0])).startswith("Hi there!")
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await ask(replicas[1])
        assert info.value.status_code == 503 and info.value.code == "state_unavailable"
        assert time.monotonic() - started < 5
        ready = await AsyncHTTPClient().fetch(replicas[1].url + "/readyz", raise_error=False)
        assert ready.code == 503
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    for replica in replicas:
        assert (await ask(replica)).startswith("Hi there!")
