"""The background self-check (``SELF_CHECK_INTERVAL``): two gateway processes on one real
redis-server probe the fake upstream about once per interval in all (not once per replica),
both export the stored outcome on ``/metrics``, a failing step reads 0 on both, and
readiness stays true while it fails."""

import asyncio
import re
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer
from tests.test_replicas import Replica

INTERVAL = 1.0


@pytest.fixture
def pair(io_loop, tmp_path):
    redis = RedisServer().start()
    fake = FakeUpstream("home", "guest_auth_user_role", "stream_glm5_plain_thinking")
    base = io_loop.run_sync(fake.start)
    replicas = [
        Replica(redis.url, base, tmp_path, SELF_CHECK_INTERVAL=str(INTERVAL)) for _ in range(2)
    ]
    yield fake, replicas
    codes = [replica.stop() for replica in replicas]
    logs = [replica.text() for replica in replicas]
    for replica in replicas:
        replica.log.close()
    io_loop.run_sync(fake.close)
    redis.stop()
    for code, log in zip(codes, logs, strict=True):
        assert code == 0, f"exit {code}:\n{log[-3000:]}"


async def scrape(replica: Replica) -> dict[str, float]:
    reply = await AsyncHTTPClient().fetch(replica.url + "/metrics")
    text = reply.body.decode()
    found = re.findall(r'^zai_gateway_upstream_step_ok\{step="([^"]+)"\} (\S+)$', text, re.M)
    at = re.search(r"^zai_gateway_upstream_check_timestamp_seconds (\S+)$", text, re.M)
    return {**{step: float(v) for step, v in found}, "at": float(at.group(1)) if at else 0.0}


async def ready(replica: Replica) -> int:
    reply = await AsyncHTTPClient().fetch(replica.url + "/readyz", raise_error=False)
    return reply.code


async def until(what, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await what()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


async def test_one_replica_probes_per_interval_and_both_export_it(pair):
    fake, replicas = pair
    for replica in replicas:
        await replica.ready()
    await until(lambda: _all(replicas, lambda m: m.get("config") == 1))
    start = len([s for s in fake.requests if s.path == "/api/config"])
    await asyncio.sleep(5 * INTERVAL)
    probes = len([s for s in fake.requests if s.path == "/api/config"]) - start
    assert 3 <= probes <= 7, probes  # about five intervals, one probe each; two replicas: ~10
    for replica in replicas:
        metrics = await scrape(replica)
        assert metrics["at"] > time.time() - 5 * INTERVAL, metrics
        assert {"breaker", "home page", "config", "sign-in", "captcha"} <= set(metrics)
    fake.fail_paths["/api/v1/auths/"] = 500  # the guest sign-in breaks
    await until(lambda: _all(replicas, lambda m: m.get("sign-in") == 0))
    for replica in replicas:
        metrics = await scrape(replica)
        assert metrics["home page"] == 1 and metrics["config"] == 1, metrics
        assert await ready(replica) == 200


async def _all(replicas, test) -> bool:
    return all([test(await scrape(replica)) for replica in replicas])
