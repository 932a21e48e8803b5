"""Redis Cluster (issue 17 item 5): ``REDIS_URL=redis+cluster://...`` is read whole, so is a
``redis://`` endpoint with ``REDIS_CLUSTER=true``, and a gateway process on a real three-master
cluster serves pooled requests (pick, release, cooldown in Redis) whose pool keys all sit in
the ``{pool}`` slot (the names: ``tests/test_key_layout.py``).
The state tests and the 200-request quota test also run on a cluster (``redis`` fixture,
``test_client_keys_replicas.py``)."""

import asyncio
import time
from dataclasses import dataclass

import openai
import pytest

from server.settings import SettingsError, load_settings
from state.connection import cluster_params, connect
from tests.accounts import ADMIN, pool_gateway
from tests.conftest import started
from tests.redis_cluster import ClusterSet

HI = [{"role": "user", "content": "hi"}]


def test_cluster_urls_are_read_whole():
    nodes, auth = cluster_params("rediss+cluster://u:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7001")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7001)]
    assert auth == {"username": "u", "password": "s3cret"}
    for bad in ("redis+cluster://", "redis+cluster://h:x"):
        with pytest.raises(ValueError):
            cluster_params(bad)


def test_redis_cluster_needs_a_cluster_address():
    for url in ("", "redis+sentinel://h/gw", "unix:///tmp/r.sock"):
        with pytest.raises(SettingsError, match="REDIS_CLUSTER"):
            load_settings(_env_file=None, auth_token="k", redis_url=url, redis_cluster=True)


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis"])
async def test_a_gateway_on_a_cluster_serves_the_pool(gateway, real_cluster_set, scheme):
    cluster_set = real_cluster_set  # the state tests' cluster (conftest); they use t: keys
    url = cluster_set.url.replace("redis+cluster://", scheme + "://")
    if scheme == "redis":  # one node, as a managed cluster's configuration endpoint
        url = url.split(",")[0]
    fresh = connect(cluster_set.url, 2.0)
    await fresh.flushall()  # the other run's pool and uses
    await fresh.aclose()
    gw = await gateway(
        "home",
        "guest_auth_user_role",
        "stream_glm5_plain_thinking",
        redis_url=url,
        redis_cluster=scheme == "redis",
        zai_tokens="tok-cluster-a,tok-cluster-b",
        anonymous_mode=False,
        admin_token=ADMIN,
    )
    async with gw.openai() as client:
        for _ in range(4):
            reply = await client.chat.completions.create(model="GLM-4.5", messages=HI)
            assert reply.choices[0].message.content
    await gw.services.pool.flush()  # the releases sent after the answers (write-behind)
    rows = await gw.services.pool.status()
    assert sorted(row.uses for row in rows) == [2, 2] and all(r.leases == 0 for r in rows)
    assert cluster_set.cli("ZCARD", "zai:{pool}:rotation").strip() == "2"
    with pytest.raises(openai.AuthenticationError):
        async with gw.openai(api_key="wrong") as client:
            await client.chat.completions.create(model="GLM-4.5", messages=HI)


@pytest.fixture
def replicated_cluster():
    """A cluster of its own (it is failed over): 3 masters, one replica each, and a 1 s
    ``cluster-node-timeout`` so a dead master's replica is promoted within seconds."""
    cset = started(lambda: ClusterSet(replicas=1, node_timeout_ms=1000))
    yield cset
    cset.stop()


@dataclass
class Answer:
    started: float  # seconds since the master was failed over (negative: before)
    took: float
    status: int
    retry_after: str | None


WORKERS = 6  # requests in flight at every moment, on 3 tokens
# How the pool's master is failed over: (cluster, master, its replica) -> None
FAIL_OVER = {
    "manual": lambda cset, master, replica: cset.failover(replica),  # CLUSTER FAILOVER
    "kill": lambda cset, master, replica: cset.kill(master),  # SIGKILL: promoted by the others
}


@pytest.mark.parametrize("how", FAIL_OVER)
async def test_a_master_failover_under_load_costs_only_its_window(replicated_cluster, gateway, how):
    cset = replicated_cluster
    gw = await pool_gateway(
        gateway,
        redis_url=cset.url,
        lease_ttl=2,
        pool_max_concurrency=WORKERS,  # no request waits on a busy token: only Redis can fail
    )
    # the master that holds the pool's slot, found from the key the gateway uses
    master = cset.holder(gw.services.keys.tokens)
    replica = cset.replica_of(master)
    failed_at = time.monotonic() + 1.5
    stop = asyncio.Event()
    answers: list[Answer] = []

    async def ask(client: openai.AsyncOpenAI) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await client.chat.completions.create(model="GLM-4.5", messages=HI)
                status, retry_after = 200, None
            except openai.APIStatusError as err:
                status, retry_after = err.status_code, err.response.headers.get("retry-after")
            answers.append(
                Answer(started - failed_at, time.monotonic() - started, status, retry_after)
            )
            if status != 200:
                await asyncio.sleep(0.1)

    async with gw.openai() as client:
        load = [asyncio.ensure_future(ask(client)) for _ in range(WORKERS)]
        await asyncio.sleep(failed_at - time.monotonic())
        FAIL_OVER[how](cset, master, replica)
        failover = await asyncio.to_thread(cset.wait_master, replica)
        await asyncio.sleep(3)  # steady traffic on the new master
        stop.set()
        await asyncio.gather(*load)
    assert cset.holder(gw.services.keys.tokens) is replica

    served_before = [a for a in answers if a.started + a.took < 0]
    assert served_before and all(a.status == 200 for a in served_before), served_before
    failed = [a for a in answers if a.status != 200]
    # what fails is a clean 503 with Retry-After (never a 500), answered at once...
    assert all(a.status == 503 and a.retry_after for a in failed), failed
    assert max((a.took for a in failed), default=0) < 2.5, failed
    # ...and only within the failover's window
    window = failover + 1.5
    assert all(a.started + a.took >= 0 and a.started < window for a in failed), (failover, failed)
    after = [a for a in answers if a.started >= window]
    assert len(after) >= WORKERS and all(a.status == 200 for a in after), after
    assert max(a.took for a in answers) < window + 2.5  # no request hung

    # nothing left held or cooling once the traffic stops
    await gw.services.pool.flush()
    await asyncio.sleep(2.2)  # a lease whose release was lost with a killed master lapses
    rows = await gw.services.pool.status()
    assert len(rows) == 3 and all(r.state == "active" and r.leases == 0 for r in rows), rows
    redis = gw.services.redis
    now_ms = int((await redis.time())[0]) * 1000
    for tid in await redis.hkeys(gw.services.keys.tokens):
        assert await redis.zcount(gw.services.keys.leases(tid), now_ms, "+inf") == 0
        assert await redis.zcard(gw.services.keys.leases(tid)) == 0  # released, not lapsed
    print(
        f"{how}: failover {failover:.2f} s, {len(answers)} requests, {len(failed)} failed "
        f"(503) between {min((a.started for a in failed), default=0):.2f} and "
        f"{max((a.started + a.took for a in failed), default=0):.2f} s"
    )


async def test_closing_the_client_closes_connections_to_nodes_it_dropped(real_cluster_set):
    # After a failover redis-py drops the old topology's node objects and closes only the
    # nodes it still knows: a connection to a dropped one was left to the garbage collector.
    client = connect(real_cluster_set.url, 2.0)
    for n in range(12):  # keys on every master: a connection to each
        await client.set(f"drop-test:{n}", n)
    dropped = next(iter(client.nodes_manager.nodes_cache.values()))  # type: ignore[attr-defined]
    kept = dropped.acquire_connection()  # its connection, as a command in flight holds it
    await kept.connect()
    client.nodes_manager.nodes_cache.pop(dropped.name)  # type: ignore[attr-defined]
    await client.aclose()
    assert not kept.is_connected
