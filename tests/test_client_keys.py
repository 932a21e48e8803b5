"""Client keys with quotas (issue 17 items 1 and 2): issued by the admin API, stored as a
hash, checked and reserved in one Lua call, refused with OpenAI's x-ratelimit-* headers in
the shape of the face called, and counted per key, model and day."""

import asyncio
import contextlib
import json
import time

import anthropic
import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from state.client_keys import ClientKeys, parse_secret
from state.keys import Keys
from tests.accounts import ADMIN, TOKENS, admin, pool_gateway
from tests.conftest import API_KEY

OK = "stream_glm5_plain_thinking"
BASE = ("home", "guest_auth")
HI = [{"role": "user", "content": "hi"}]


async def ask(gw, key: str, model: str = "GLM-4.5", **extra):
    async with gw.openai(key) as client:
        return await client.chat.completions.with_raw_response.create(
            model=model, messages=HI, **extra
        )


async def refused(gw, key: str, model: str = "GLM-4.5") -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        await ask(gw, key, model)
    return info.value


# --- the store and its scripts, on fakeredis and on a real redis-server -------------------


async def test_secret_is_stored_only_as_its_hash(redis):
    keys = ClientKeys(redis, Keys("t:"))
    key, secret = await keys.create(name="ci", rpm=5)
    kid, digest = parse_secret(secret)
    assert kid == key.id and secret.startswith(f"sk-zai-{kid}-")
    stored = await redis.hgetall(f"t:{{k:{kid}}}:key")
    assert stored["hash"] == digest and secret not in json.dumps(stored)
    assert await redis.smembers("t:{pool}:keys") == {kid}
    assert (await keys.admit(kid, "0" * 64, "", 0, 0, "r0")).refused == "unknown"
    assert (await keys.admit(kid, digest, "", 0, 0, "r1")).refused == ""


async def test_request_limit_is_a_sliding_minute_and_tokens_a_bucket(redis):
    keys = ClientKeys(redis, Keys("t:"))
    _, secret = await keys.create(name="ci", rpm=3, tpm=1000)
    kid, digest = parse_secret(secret)
    got = [await keys.admit(kid, digest, "glm-4.5", 1, 100, f"r{i}") for i in range(4)]
    assert [a.refused for a in got] == ["", "", "", "rpm"]
    requests, tokens = got[2].limits
    assert (requests.kind, requests.limit, requests.remaining) == ("requests", 3, 0)
    assert 59 < requests.reset <= 60 and 59 < got[3].retry_after <= 60
    # 1000 a minute refill 1 token each 60 ms: a slow run sees a few more than 700 left
    assert (tokens.kind, tokens.limit) == ("tokens", 1000) and 699 <= tokens.remaining <= 710
    assert got[0].reserved_minute == 100 and got[3].reserved_minute == 0
    # a lookup (no request, no tokens) is never refused and takes nothing
    lookup = await keys.admit(kid, digest, "", 0, 0, "r9")
    assert lookup.refused == "" and lookup.limits[0].remaining == 0
    # settling gives back what was not used: 100 reserved, 10 used
    await keys.settle(kid, got[0], 10)
    await keys.update(kid, rpm=0)
    after = await keys.admit(kid, digest, "glm-4.5", 1, 0, "r10")
    assert 789 <= after.limits[0].remaining <= 800  # 700 without the settle
    # tokens: more than what is left is refused, with the wait until enough has refilled
    big = await keys.admit(kid, digest, "glm-4.5", 1, 900, "r11")
    assert big.refused == "tpm" and 4 < big.retry_after <= 7


async def test_disabled_expired_and_model_list(redis):
    keys = ClientKeys(redis, Keys("t:"))
    _, secret = await keys.create(name="ci", models=["GLM-4.5"])
    kid, digest = parse_secret(secret)
    assert (await keys.admit(kid, digest, "GLM-4.7", 1, 0, "a")).refused == "model"
    assert (await keys.admit(kid, digest, "GLM-4.5", 1, 0, "b")).refused == ""
    await keys.update(kid, disabled=True)
    assert (await keys.admit(kid, digest, "GLM-4.5", 1, 0, "c")).refused == "disabled"
    await keys.update(kid, disabled=False, expires_at=time.time() - 1)
    assert (await keys.admit(kid, digest, "GLM-4.5", 1, 0, "d")).refused == "expired"
    assert await keys.delete(kid) and not await keys.delete(kid)
    assert (await keys.admit(kid, digest, "GLM-4.5", 1, 0, "e")).refused == "unknown"
    assert await keys.update(kid, name="x") is None and await keys.get(kid) is None


# --- through the gateway ------------------------------------------------------------------


async def start(gateway, **settings):
    return await gateway(*BASE, OK, admin_token=ADMIN, **settings)


async def new_key(gw, **fields) -> dict:
    code, body = await admin(gw, "POST", "/v1/keys", {"name": "team-a", **fields})
    assert code == 201, body
    return body


async def test_admin_api_issues_lists_changes_and_deletes_keys(gateway):
    gw = await start(gateway)
    created = await new_key(gw, models=["glm-4.5"], rpm=10, tpm=5000)
    secret = created.pop("key")
    assert created["models"] == ["GLM-4.5"] and created["rpm"] == 10 and not created["disabled"]
    code, listed = await admin(gw, "GET", "/v1/keys")
    assert code == 200 and listed["data"] == [created]
    assert secret not in json.dumps(listed)
    assert (await admin(gw, "GET", f"/v1/keys/{created['id']}"))[1] == created
    code, changed = await admin(gw, "PATCH", f"/v1/keys/{created['id']}", {"tpd": 7, "name": "b"})
    assert code == 200 and changed["tpd"] == 7 and changed["name"] == "b"
    assert changed["rpm"] == 10
    # bad input names the field; an unknown model is refused at creation
    code, body = await admin(gw, "POST", "/v1/keys", {"name": "x", "rpm": -1})
    assert code == 400 and body["error"]["param"] == "rpm"
    code, body = await admin(gw, "POST", "/v1/keys", {"name": "x", "models": ["gpt-9"]})
    assert code == 400 and body["error"]["param"] == "models[0]"
    # the admin token is needed; a client key is not it
    assert (await admin(gw, "GET", "/v1/keys", token=secret))[0] == 401
    assert (await admin(gw, "DELETE", f"/v1/keys/{created['id']}"))[0] == 200
    assert (await admin(gw, "DELETE", f"/v1/keys/{created['id']}"))[0] == 404
    assert (await admin(gw, "GET", "/v1/keys"))[1]["data"] == []


async def test_limited_key_gets_headers_then_a_429_in_the_openai_shape(gateway):
    gw = await start(gateway)
    secret = (await new_key(gw, rpm=2, tpm=100000))["key"]
    first = await ask(gw, secret)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] in ("59s", "1m0s")
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100000
    assert first.parse().choices[0].message.content.startswith("Hi there!")
    await ask(gw, secret)
    err = await refused(gw, secret)
    assert err.status_code == 429 and err.code == "key_rate_limited"
    assert err.type == "rate_limit_error" and "2 requests per minute" in err.message
    assert 58 <= int(err.response.headers["Retry-After"]) <= 60
    assert err.response.headers["x-should-retry"] == "true"
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(gw.completions_seen()) == 2  # the refused one never reached the upstream
    # AUTH_TOKEN keeps working, unlimited and without headers
    plain = await ask(gw, API_KEY)
    assert "x-ratelimit-limit-requests" not in plain.headers


async def test_refused_in_the_anthropic_shape(gateway):
    gw = await start(gateway)
    secret = (await new_key(gw, rpm=1))["key"]
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=secret, max_retries=0, timeout=20
    ) as client:
        reply = await client.messages.with_raw_response.create(
            model="claude-sonnet-4", max_tokens=100, messages=HI
        )
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(model="claude-sonnet-4", max_tokens=100, messages=HI)
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "1"
    assert int(info.value.response.headers["Retry-After"]) >= 58


async def test_disabled_key_is_refused_on_its_next_request(gateway):
    gw = await start(gateway)
    created = await new_key(gw, models=["GLM-4.5"])
    secret = created["key"]
    assert (await ask(gw, secret)).parse().choices[0].message.content
    err = await refused(gw, secret, "GLM-4.7")
    assert err.status_code == 403 and "may not use model GLM-4.7" in err.message
    await admin(gw, "PATCH", f"/v1/keys/{created['id']}", {"disabled": True})
    err = await refused(gw, secret)
    assert err.status_code == 401 and "disabled" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    async with gw.openai(secret) as client:  # every route checks it, not only completions
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    await admin(gw, "DELETE", f"/v1/keys/{created['id']}")
    assert (await refused(gw, secret)).status_code == 401
    # a key of the issued shape that was never issued
    assert (await refused(gw, "sk-zai-0123456789ab-" + "0" * 48)).status_code == 401


async def test_usage_per_key_model_and_day_and_in_metrics(gateway):
    gw = await start(gateway)
    created = await new_key(gw, rpm=2)
    secret, kid = created["key"], created["id"]
    for _ in range(3):
        with contextlib.suppress(openai.RateLimitError):
            await ask(gw, secret)
    await ask(gw, API_KEY, "GLM-4.6")
    code, usage = await admin(gw, "GET", f"/v1/usage?key={kid}&group_by=key,model")
    assert code == 200
    assert usage["data"] == [
        {
            "key": kid,
            "model": "GLM-4.5",
            "name": "team-a",
            "requests": 3,
            "input_tokens": 12,  # the upstream said 6 prompt and 210 completion tokens
            "output_tokens": 420,
            "errors": 1,
        }
    ]
    _, everyone = await admin(gw, "GET", "/v1/usage?group_by=key")
    by_name = {row["name"]: row for row in everyone["data"]}
    assert by_name["AUTH_TOKEN"]["requests"] == 1 and by_name["AUTH_TOKEN"]["key"].startswith(
        "env-"
    )
    _, by_day = await admin(gw, "GET", "/v1/usage?group_by=day")
    assert by_day["data"][0]["requests"] == 4
    assert (await admin(gw, "GET", "/v1/usage?group_by=secret"))[0] == 400
    assert (await admin(gw, "GET", "/v1/usage?from=2026-13-01"))[0] == 400
    metrics = (await AsyncHTTPClient().fetch(gw.url + "/metrics")).body.decode()
    assert f'zai_gateway_key_requests_total{{key="{kid}",model="GLM-4.5",name="team-a",' in metrics
    assert 'status="429"' in metrics and 'direction="output"' in metrics
    assert secret not in metrics and API_KEY not in metrics
    raw = await gw.services.redis.hgetall(f"zai:{{k:{kid}}}:usage:{time.strftime('%Y%m%d')}")
    assert raw == {"GLM-4.5:requests": "3", "GLM-4.5:input": "12", "GLM-4.5:output": "420",
                   "GLM-4.5:errors": "1"}  # fmt: skip


async def test_token_reservation_is_settled_with_the_real_usage(gateway):
    gw = await start(gateway)
    secret = (await new_key(gw, tpd=6000))["key"]  # refills 6000 a day: nothing meanwhile
    first = await ask(gw, secret, max_tokens=5000)
    reserved = 6000 - int(first.headers["x-ratelimit-remaining-tokens-day"])
    assert 5000 < reserved < 5100  # the estimate: the prompt plus max_tokens
    assert first.headers["x-ratelimit-limit-tokens-day"] == "6000"
    second = await ask(gw, secret)
    left = int(second.headers["x-ratelimit-remaining-tokens-day"])
    # the first request's 216 real tokens are charged, not its 5000+ reservation; the
    # second reserved its own estimate (the prompt "hi": a few tokens)
    assert 6000 - 216 - 10 <= left <= 6000 - 216 - 1
    await asyncio.sleep(0.05)  # the second one's settle, after its answer
    third = await ask(gw, secret)
    assert int(third.headers["x-ratelimit-remaining-tokens-day"]) < 6000 - 2 * 216


async def test_pooled_a_refused_key_gives_its_token_back_unused(gateway):
    # With pooled tokens the key's check runs with the token pick (one round trip): a key the
    # limits refuse never reaches the upstream, and the token the pick took goes back unused.
    gw = await pool_gateway(gateway, tokens=TOKENS[:1])
    secret = (await new_key(gw, rpm=1, tpm=100000))["key"]
    first = await ask(gw, secret)
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    err = await refused(gw, secret)
    assert err.status_code == 429 and err.code == "key_rate_limited"
    assert err.response.headers["x-ratelimit-limit-requests"] == "1"
    assert 58 <= int(err.response.headers["Retry-After"]) <= 60
    assert len(gw.completions_seen()) == 1
    await gw.services.pool.flush()  # the spare lease is given back off the request's path
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    row = status["tokens"][0]
    assert row["leases"] == 0 and row["failures"] == 0 and row["state"] == "active"
