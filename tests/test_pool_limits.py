"""The upstream's per-account limits through the SDK: an in-band rate limit (PROTOCOL.md section
6.7) before the first byte cools the token briefly and another token answers; the default
``POOL_MAX_CONCURRENCY`` never sends one account two conversations at once."""

import asyncio

import openai
import pytest

from server.ops.metrics import RETRIES
from tests.accounts import HELLO, OK, TOKENS, admin, pool_gateway, tokens_used
from tests.recorded import expected

LIMITS = [429, "MODEL_CONCURRENCY_LIMIT", "RATE_LIMIT_EXCEEDED", "TOO_MANY_REQUESTS"]


async def answer(client: openai.AsyncOpenAI, stream: bool) -> str:
    reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO, stream=stream)
    if not stream:
        return reply.choices[0].message.content
    return "".join([c.choices[0].delta.content or "" async for c in reply if c.choices])


@pytest.mark.parametrize("code", LIMITS)
async def test_an_inband_rate_limit_cools_the_token_briefly_and_another_answers(gateway, code):
    gw = await pool_gateway(
        gateway,
        tokens=TOKENS[:2],
    )
    gw.fake.limit_tokens[TOKENS[0]] = code
    async with gw.openai() as client:
        for stream in (True, False, True, False):
            assert await answer(client, stream) == expected(OK)["content"]
    used = tokens_used(gw)
    assert used[TOKENS[0]] == 1 and used[TOKENS[1]] == 4  # limited once, then left alone
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    row = next(r for r in status["tokens"] if r["state"] == "cooling")
    # briefly: POOL_COOLDOWN_BASE, 5 s by default
    assert row["failures"] == 1 and 0 < row["cooldown_left"] <= 5
    assert row["reason"].startswith("rate_limited")


async def test_a_rate_limit_on_every_token_is_a_429_the_sdk_can_wait_out(gateway):
    gw = await gateway(
        "home", "guest_auth_user_role", OK, zai_tokens=",".join(TOKENS), anonymous_mode=False
    )
    for token in TOKENS:
        gw.fake.limit_tokens[token] = "MODEL_CONCURRENCY_LIMIT"
    async with gw.openai() as client:
        with pytest.raises(openai.RateLimitError) as info:
            await answer(client, True)
    assert info.value.code == "rate_limited" and "busy" in info.value.message
    assert 1 <= int(info.value.response.headers["Retry-After"]) <= 5
    assert len(gw.completions_seen()) == 3


async def test_one_account_gets_one_conversation_at_a_time_by_default(gateway):
    gw = await pool_gateway(
        gateway,
        tokens=TOKENS[:2],
        pace=0.02,
    )
    assert gw.services.settings.pool_max_concurrency == 1
    async with gw.openai() as client:
        results = await asyncio.gather(
            *(answer(client, True) for _ in range(4)), return_exceptions=True
        )
    served = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(served) == 2 and len(refused) == 2, results
    for err in refused:
        assert err.status_code == 503 and err.code == "pool_exhausted"
        assert "concurrency limit" in err.message and err.response.headers["Retry-After"] == "1"
    assert set(gw.fake.most_in_flight.values()) == {1}


async def test_a_pool_all_cooling_is_answered_without_another_pick(gateway):
    gw = await gateway(
        "home", "guest_auth_user_role", OK, zai_tokens=TOKENS[0], anonymous_mode=False
    )
    gw.fake.fail_tokens[TOKENS[0]] = 429
    async with gw.openai() as client:
        with pytest.raises(openai.RateLimitError):
            await answer(client, False)
        retried = RETRIES._value.get()
        with pytest.raises(openai.RateLimitError) as info:
            await answer(client, False)
    assert "rate-limited" in info.value.message  # it found the pool cooling
    assert RETRIES._value.get() == retried  # and did not pick again
    assert len(gw.completions_seen()) == 1
