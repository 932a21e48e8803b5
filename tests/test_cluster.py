"""Redis Cluster (issue 17 item 5): ``REDIS_URL=redis+cluster://...`` is read whole, so is a
``redis://`` endpoint with ``REDIS_CLUSTER=true``, and a gateway process on a real three-master
cluster serves pooled requests (pick, release, cooldown in Redis) whose pool keys all sit in
the ``{pool}`` slot (the names: ``tests/test_key_layout.py``).
The state tests and the 200-request quota test also run on a cluster (``redis`` fixture,
``test_client_keys_replicas.py``)."""

import openai
import pytest

from server.settings import SettingsError, load_settings
from state.connection import cluster_params, connect
from tests.accounts import ADMIN

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
