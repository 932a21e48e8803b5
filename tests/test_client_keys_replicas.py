"""Issue 17's acceptance for limits: 200 concurrent requests from 3 replica processes on one
key limited to 50 a minute, on a real redis-server, on a real Sentinel set and on a real
three-master Redis Cluster: exactly 50
succeed, the other 150 get a 429 with Retry-After and OpenAI's x-ratelimit-* headers, and
the upstream sees exactly 50."""

import asyncio
import collections
import json

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.accounts import ADMIN
from tests.fake_upstream import FakeUpstream
from tests.redis_cluster import ClusterSet
from tests.redis_sentinel import SentinelSet
from tests.redis_server import RedisServer
from tests.test_replicas import replica, used

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["redis-server", "sentinel", "cluster"])
def cluster(request, io_loop, tmp_path):
    """Three replicas as in test_replicas, on a plain redis-server, a Sentinel set or a Redis
    Cluster, with a Redis timeout fit for a burst: each process opens its connections during
    the burst itself, and on this shared 2-core machine a connect can take longer than 0.5 s."""
    sset: SentinelSet | ClusterSet | None = None
    if request.param == "sentinel":
        sset = SentinelSet().start()
        redis = sset.master
    elif request.param == "cluster":
        sset = ClusterSet().start()
        redis = sset.nodes[0]
    else:
        redis = RedisServer().start()
    url = sset.url if sset is not None else redis.url
    store = sset if isinstance(sset, ClusterSet) else redis  # where a key's names are read
    fake = FakeUpstream("home", "guest_auth_user_role", "stream_glm5_plain_thinking")
    base = io_loop.run_sync(fake.start)
    replicas = [replica(url, base, tmp_path, REDIS_TIMEOUT="5") for _ in range(3)]
    yield store, fake, replicas
    codes = [r.stop() for r in replicas]
    io_loop.run_sync(fake.close)
    (sset or redis).stop()
    assert codes == [0, 0, 0]


@pytest.mark.timeout(120)
async def test_fifty_a_minute_is_fifty_across_three_replicas(cluster):
    store, fake, replicas = cluster
    await asyncio.gather(*(r.ready() for r in replicas))
    reply = await AsyncHTTPClient().fetch(
        replicas[0].url + "/v1/keys",
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN}"},
        body=json.dumps({"name": "load", "rpm": 50}),
    )
    created = json.loads(reply.body)
    clients = [
        openai.AsyncOpenAI(
            base_url=r.url + "/v1", api_key=created["key"], max_retries=0, timeout=60
        )
        for r in replicas
    ]

    async def one(i: int):
        try:
            raw = await clients[i % 3].chat.completions.with_raw_response.create(
                model="GLM-5.1", messages=HI
            )
            return 200, raw.headers
        except openai.APIStatusError as err:
            return err.status_code, err.response.headers

    results = await asyncio.gather(*(one(i) for i in range(200)))
    for client in clients:
        await client.close()
    codes = collections.Counter(code for code, _ in results)
    assert codes == {200: 50, 429: 150}
    assert sum(used(fake).values()) == 50  # the refused ones never reached the upstream
    for code, headers in results:
        assert headers["x-ratelimit-limit-requests"] == "50"
        if code == 429:
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert 1 <= int(headers["Retry-After"]) <= 60
            assert headers["x-should-retry"] == "true"
            assert headers["x-ratelimit-reset-requests"].endswith("s")
    remaining = sorted(int(h["x-ratelimit-remaining-requests"]) for c, h in results if c == 200)
    assert remaining == list(range(50))  # each success saw its own place in the minute
    log = f"zai:{{k:{created['id']}}}:rpm"
    assert store.cli("ZCARD", log).strip() == "50"
    # every replica refused some and let some through: the limit is shared, not per process
    assert len({i % 3 for i, (code, _) in enumerate(results) if code == 429}) == 3
