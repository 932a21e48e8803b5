"""``/metrics`` in Prometheus format, read with the Prometheus client's own parser."""

import asyncio

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from state.pool import Pick, TokenPool
from tests.accounts import TOKENS


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_what_happened(gateway):
    gw = await gateway(
        "home",
        "guest_auth_user_role",
        "error_http_429",
        "stream_glm5_plain_thinking",
        zai_tokens=",".join(TOKENS[:2]),
    )
    async with gw.openai() as client:
        await client.chat.completions.create(
            model="GLM-4.5", messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
    # a lease left by a process that died: shown apart, as an orphan
    gone = TokenPool(
        gw.services.redis,
        gw.services.keys,
        cooldown_base=1,
        cooldown_cap=1,
        max_concurrency=0,
        lease_ttl=60,
        owner="gone-host:1:dead00",
    )
    assert isinstance(await gone.acquire(), Pick)
    reply = await AsyncHTTPClient().fetch(gw.url + "/metrics")
    assert reply.headers["Content-Type"].startswith("text/plain")
    got = samples(reply.body.decode())
    ok = (
        "zai_gateway_requests_total",
        (("model", "GLM-4.5"), ("route", "chat_completions"), ("status", "200")),
    )
    assert got[ok] >= 1
    missing = (
        "zai_gateway_requests_total",
        (("model", "-"), ("route", "chat_completions"), ("status", "404")),
    )
    assert got[missing] >= 1
    assert got[("zai_gateway_upstream_errors_total", (("kind", "rate_limited"),))] >= 1
    assert got[("zai_gateway_upstream_retries_total", ())] >= 1
    assert (
        got[("zai_gateway_request_duration_seconds_count", (("route", "chat_completions"),))] >= 2
    )
    assert (
        "zai_gateway_time_to_first_byte_seconds_bucket",
        (("le", "+Inf"), ("route", "chat_completions")),
    ) in got
    assert got[("zai_gateway_pool_tokens", (("state", "cooling"),))] == 1
    assert got[("zai_gateway_pool_tokens", (("state", "active"),))] == 1
    assert got[("zai_gateway_pool_leases", (("owner", "orphan"),))] == 1
    assert got[("zai_gateway_pool_leases", (("owner", "live"),))] == 0
    assert got[("zai_gateway_pool_unsettled_leases", ())] == 0
    assert got[("zai_gateway_instances", ())] == 1
    assert got[("zai_gateway_redis_up", ())] == 1
    assert got[("zai_gateway_inflight_requests", ())] == 0


async def test_an_idle_pool_whose_cooldown_ended_shows_active_tokens(gateway):
    gw = await gateway(
        "home",
        "guest_auth_user_role",
        "error_http_429",
        "stream_glm5_plain_thinking",
        zai_tokens=TOKENS[0],
        anonymous_mode=False,
        pool_cooldown_base=0.2,
        upstream_retries=0,
    )
    async with gw.openai() as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="GLM-4.5", messages=[{"role": "user", "content": "hi"}]
            )
    got = samples((await AsyncHTTPClient().fetch(gw.url + "/metrics")).body.decode())
    assert got[("zai_gateway_pool_tokens", (("state", "cooling"),))] == 1
    await asyncio.sleep(0.3)  # the cooldown ends; no request comes to pick the token
    got = samples((await AsyncHTTPClient().fetch(gw.url + "/metrics")).body.decode())
    assert got[("zai_gateway_pool_tokens", (("state", "active"),))] == 1
    assert got[("zai_gateway_pool_tokens", (("state", "cooling"),))] == 0
    assert got[("zai_gateway_pool_cooldown_seconds_max", ())] == 0
    rows = await gw.services.pool.status()
    assert [r.state for r in rows] == ["active"]
