"""The Aliyun WAF block (PROTOCOL.md section 6.3): recognised by its page, answered as a 503
``waf_blocked`` with Retry-After, never blamed on the token, and held in a breaker in Redis
that every replica obeys (no completion is sent while it is open), doubling up to its cap."""

import asyncio

import openai
import pytest

from server.zai.request import COMPLETIONS_PATH
from state.keys import Keys
from state.waf import HALF_OPEN, WafBreaker
from tests.accounts import ADMIN, TOKENS, admin

OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]


async def test_block_opens_the_shared_breaker_for_every_replica(gateway, real_redis_server):
    common = {
        "zai_tokens": TOKENS[0],
        "anonymous_mode": False,
        "admin_token": ADMIN,
        "redis_url": real_redis_server.url,
        "redis_prefix": "waf-test:",
    }
    first = await gateway("home", "guest_auth_user_role", "error_http_405_waf", OK, **common)
    await first.services.redis.flushall()
    await first.services.pool.add([TOKENS[0]])
    await first.services.health_check()
    second = await gateway("home", "guest_auth_user_role", OK, **common)
    async with first.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    err = info.value
    assert err.status_code == 503 and err.code == "waf_blocked"
    assert 55 <= int(err.response.headers["Retry-After"]) <= 60
    assert "firewall" in err.message and "another egress IP" in err.message
    assert len(first.completions_seen()) == 1  # not retried: retries lengthen the block
    async with second.openai() as client:  # the other replica sends nothing while it is open
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.code == "waf_blocked" and len(second.completions_seen()) == 0
    _, status = await admin(first, "GET", "/v1/token-pool/status")
    assert status["summary"]["active"] == 1 and status["tokens"][0]["failures"] == 0


async def test_breaker_doubles_up_to_its_cap_and_stays_open_while_open(redis):
    # Windows of 0.4 s: long enough that the round trips inside one fit on a loaded machine.
    breaker = WafBreaker(redis, Keys("t:"), base=0.4, cap=1.2)
    assert await breaker.open_for() == [0]
    assert 0 < await breaker.trip() <= 0.4
    assert 0 < await breaker.trip() <= 0.4  # a block seen while open does not double
    assert (await breaker.open_for())[0] > 0
    assert not await breaker.clear()  # not while open
    await asyncio.sleep(0.45)
    assert await breaker.open_for() == [HALF_OPEN]  # shut until a probe clears it
    assert 0.4 < await breaker.trip() <= 0.8  # doubled
    await asyncio.sleep(0.85)
    assert 0.8 < await breaker.trip() <= 1.2  # capped
    await asyncio.sleep(1.25)
    assert await breaker.clear() and await breaker.open_for() == [0]
    assert not await breaker.clear()  # once


def probes(fake) -> list:
    """The bare unauthenticated POSTs a replica sends to learn whether a block is over."""
    return [r for r in fake.requests if r.path == COMPLETIONS_PATH and not r.query]


def pooled(**more) -> dict:
    # one token serves the concurrent requests here (the per-account cap is not under test)
    return {
        "zai_tokens": TOKENS[0],
        "anonymous_mode": False,
        "admin_token": ADMIN,
        "pool_max_concurrency": 0,
        **more,
    }


async def test_one_replica_probes_when_the_window_ends_and_the_others_wait(
    gateway, real_redis_server
):
    common = pooled(
        redis_url=real_redis_server.url, redis_prefix="waf-probe:", waf_backoff_base=0.5
    )
    first = await gateway("home", "guest_auth_user_role", OK, **common)
    await first.services.redis.flushall()
    await first.services.pool.add([TOKENS[0]])
    await first.services.health_check()
    second = await gateway(zai_base_url=first.fake.base_url, **common)  # the same upstream
    first.fake.waf_sources = {"127.0.0.1"}
    async with first.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.code == "waf_blocked"
    first.fake.waf_sources = set()  # the block is lifted upstream
    await asyncio.sleep(0.6)  # the window ends: half-open

    async def ask(gw):
        async with gw.openai() as client:
            reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
            return reply.choices[0].message.content

    answers = await asyncio.gather(*(ask(gw) for gw in (first, second, first, second)))
    assert all(answers)  # every request waited for the one probe, none got a 503
    assert len(probes(first.fake)) == 1  # one replica probed, once
    sent = [r for r in first.completions_seen() if r.query]
    assert len(sent) == 5  # the blocked one and the four
    assert max(r.at for r in probes(first.fake)) < min(r.at for r in sent[1:])
    _, status = await admin(first, "GET", "/v1/token-pool/status")
    assert status["routes"][0]["state"] == "ok"


async def test_a_probe_that_is_still_blocked_doubles_the_window(gateway):
    gw = await gateway("home", "guest_auth_user_role", OK, **pooled(waf_backoff_base=0.3))
    gw.fake.waf_sources = {"127.0.0.1"}
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        await asyncio.sleep(0.35)
        _, status = await admin(gw, "GET", "/v1/token-pool/status")
        assert status["routes"][0]["state"] == "half-open"
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    err = info.value
    assert err.code == "waf_blocked" and err.response.headers["Retry-After"] == "1"
    assert len(probes(gw.fake)) == 1
    assert len([r for r in gw.completions_seen() if r.query]) == 1  # only the first request
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert status["routes"][0]["state"] == "blocked"
    backoff = await gw.services.redis.hget("zai:{pool}:waf:direct", "backoff")
    assert float(backoff) == pytest.approx(0.6)
