"""The Aliyun WAF block (PROTOCOL.md section 6.3): recognised by its page, answered as a 503
``waf_blocked`` with Retry-After, never blamed on the token, and held in a breaker in Redis
that every replica obeys (no completion is sent while it is open), doubling up to its cap."""

import asyncio

import openai
import pytest

from state.keys import Keys
from state.waf import WafBreaker
from tests.test_pool_gateway import ADMIN, TOKENS, admin

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
    breaker = WafBreaker(redis, Keys("t:"), base=0.05, cap=0.15)
    assert await breaker.open_for() == [0]
    assert 0 < await breaker.trip() <= 0.05
    assert 0 < await breaker.trip() <= 0.05  # a block seen while open does not double
    assert (await breaker.open_for())[0] > 0
    await asyncio.sleep(0.06)
    assert await breaker.open_for() == [0]
    assert 0.05 < await breaker.trip() <= 0.1  # doubled
    await asyncio.sleep(0.11)
    assert 0.1 < await breaker.trip() <= 0.15  # capped
