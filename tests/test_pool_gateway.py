"""The pool through the gateway: configured tokens validated, rotated, cooled, refused;
the admin API; guest fallback and reserve; Redis trouble."""

import asyncio
import json

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from state.keys import token_id
from tests.accounts import ADMIN, HELLO, OK, TOKENS, admin, pool_gateway, tokens_used
from tests.redis_server import free_port


async def test_configured_tokens_are_validated_and_rotated(gateway):
    gw = await pool_gateway(
        gateway,
    )
    async with gw.openai() as client:
        for _ in range(9):
            await client.chat.completions.create(model="GLM-5.1", messages=HELLO)
    assert sorted(tokens_used(gw).values()) == [3, 3, 3]
    code, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert code == 200 and status["summary"]["active"] == 3
    assert {row["uses"] for row in status["tokens"]} == {3}
    text = json.dumps(status)
    assert not any(token in text for token in TOKENS)


async def test_rate_limited_token_cools_down_and_others_serve(gateway):
    gw = await pool_gateway(
        gateway,
        pool_cooldown_base=60,
    )
    gw.fake.fail_tokens[TOKENS[0]] = 429
    async with gw.openai() as client:
        for _ in range(6):
            reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
            assert reply.choices[0].finish_reason == "stop"
    used = tokens_used(gw)
    assert used[TOKENS[0]] == 1  # limited once (retried on another), then skipped
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    row = next(r for r in status["tokens"] if r["state"] == "cooling")
    assert row["failures"] == 1 and 50 < row["cooldown_left"] <= 60
    assert "rate_limited" in row["reason"]


async def test_an_upstream_500_leaves_the_pool_usable_once_it_recovers(gateway):
    gw = await pool_gateway(
        gateway,
    )
    for token in TOKENS:
        gw.fake.fail_tokens[token] = 500
    async with gw.openai() as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        assert info.value.status_code == 502 and info.value.code == "unavailable"
        assert len(gw.completions_seen()) == 3  # 1 + UPSTREAM_RETRIES attempts, no more
        gw.fake.fail_tokens.clear()  # the upstream is back
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert status["summary"]["active"] == 3
    assert [(r["failures"], r["leases"]) for r in status["tokens"]] == [(0, 0)] * 3


async def test_a_429_storm_reaches_the_client_as_429_with_retry_after(gateway):
    gw = await pool_gateway(
        gateway,
        pool_cooldown_base=42,
        pool_max_concurrency=0,
    )
    for token in TOKENS:
        gw.fake.fail_tokens[token] = 429
    async with gw.openai() as client:

        async def one() -> openai.RateLimitError:
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
            return info.value

        # 12 at once, then 3 more once every token is cooling: all 429, none 503
        errors = [*await asyncio.gather(*(one() for _ in range(12))), *[await one() for _ in "abc"]]
    for err in errors:
        assert err.status_code == 429 and err.code == "rate_limited", err
        assert 1 <= int(err.response.headers["Retry-After"]) <= 42
        assert err.response.headers["x-should-retry"] == "true"
    assert "rate-limited" in errors[-1].message
    assert 40 <= int(errors[-1].response.headers["Retry-After"]) <= 42
    assert len(gw.completions_seen()) <= 12 * 3  # each request burnt at most 3 tokens


async def test_all_rate_limited_with_anonymous_mode_falls_back_to_a_guest(gateway):
    gw = await gateway(
        "home",
        "guest_auth_user_role",
        OK,
        zai_tokens=TOKENS[0],
        anonymous_mode=True,
        upstream_retries=0,
    )
    gw.fake.fail_tokens[TOKENS[0]] = 429
    async with gw.openai() as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"
    assert gw.completions_seen()[-1].query["token"] not in TOKENS


async def test_guest_and_dead_tokens_are_refused_with_reasons(gateway):
    gw = await gateway(
        "home", "guest_auth", OK, zai_tokens=TOKENS[0], anonymous_mode=False, admin_token=ADMIN
    )
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    (row,) = status["tokens"]
    assert row["state"] == "dead" and "guest token" in row["reason"]
    gw2 = await gateway(
        "home", "auth_401", OK, zai_tokens=TOKENS[1], anonymous_mode=False, admin_token=ADMIN
    )
    _, status = await admin(gw2, "GET", "/v1/token-pool/status")
    assert status["tokens"][0]["state"] == "dead" and "401" in status["tokens"][0]["reason"]
    async with gw2.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 503 and "no pooled upstream token" in info.value.message


async def test_token_rejected_midway_leaves_rotation(gateway):
    gw = await pool_gateway(
        gateway,
        tokens=TOKENS[:2],
    )
    gw.fake.fail_tokens[TOKENS[0]] = 401
    async with gw.openai() as client:
        for _ in range(4):
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert tokens_used(gw)[TOKENS[0]] == 1
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert sorted(r["state"] for r in status["tokens"]) == ["active", "dead"]


async def test_admin_routes_need_the_admin_token(gateway):
    gw = await gateway("home", "guest_auth_user_role", OK)
    for path in ("/v1/token-pool/status", "/v1/instances"):
        code, body = await admin(gw, "GET", path)
        assert code == 404 and body["error"]["code"] == "not_found"
    gw = await gateway("home", "guest_auth_user_role", OK, admin_token=ADMIN)
    for token in (None, "wrong", "sk-test-0123456789abcdef"):
        code, body = await admin(gw, "GET", "/v1/token-pool/status", token=token)
        assert code == 401 and body["error"]["code"] == "invalid_api_key"
        code, _ = await admin(gw, "POST", "/v1/token-pool/update", [TOKENS[0]], token=token)
        assert code == 401
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert status["tokens"] == []


async def test_admin_update_add_remove_replace_and_health_check(gateway):
    gw = await gateway("home", "guest_auth_user_role", OK, admin_token=ADMIN, anonymous_mode=False)
    code, status = await admin(gw, "POST", "/v1/token-pool/update", TOKENS[:2])
    assert code == 200 and status["summary"]["active"] == 2
    ids = [r["id"] for r in status["tokens"]]
    _, status = await admin(
        gw, "POST", "/v1/token-pool/update", {"action": "remove", "tokens": [ids[0]]}
    )
    assert [r["id"] for r in status["tokens"]] == ids[1:]
    _, status = await admin(
        gw, "POST", "/v1/token-pool/update", {"action": "replace", "tokens": [TOKENS[2], TOKENS[2]]}
    )
    assert len(status["tokens"]) == 1 and status["tokens"][0]["masked"].endswith(TOKENS[2][-4:])
    code, checked = await admin(gw, "POST", "/v1/token-pool/health-check", {})
    assert code == 200 and [r["verdict"] for r in checked["checked"]] == ["alive"]
    code, body = await admin(gw, "POST", "/v1/token-pool/update", {"action": "merge"})
    assert code == 400 and body["error"]["param"] in ("tokens", "action")
    code, body = await admin(gw, "GET", "/v1/instances")
    assert code == 200 and len(body["instances"]) == 1
    assert body["instances"][0]["pid"].isdigit()


async def test_guest_reserve_serves_anonymous_requests(gateway):
    gw = await gateway("home", "guest_auth", OK, guest_reserve=4)
    services = gw.services
    await services.guests._refill
    assert await services.redis.llen(services.keys.guests) == 4
    async with gw.openai() as client:
        for _ in range(2):
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    # two from the reserve; the refill after them (reserve low) tops it up again
    await services.guests._refill
    tokens = [r.query["token"] for r in gw.completions_seen()]
    assert len(tokens) == 2


async def test_anonymous_requests_take_guests_a_few_per_round_trip(gateway):
    gw = await gateway("home", "guest_auth", OK, guest_reserve=16)
    services = gw.services
    await services.guests._refill
    reserve = services.keys.guests
    assert await services.redis.llen(reserve) == 16
    async with gw.openai() as client:
        for _ in range(6):
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        # two round trips took four guests each: six used, two kept for the next requests
        assert len(services.guests._held) == 2
        await services.guests._refill  # a take tops the reserve up (twice a second at most)
        left = await services.redis.llen(reserve)
        for _ in range(2):
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        assert not services.guests._held  # served by the two kept: no round trip, no take
        assert await services.redis.llen(reserve) == left
    assert len(gw.completions_seen()) == 8


async def test_a_reserve_in_use_is_kept_full_not_left_to_drain_to_half(gateway):
    gw = await gateway("home", "guest_auth", OK, guest_reserve=16)
    services = gw.services
    await services.guests._refill
    async with gw.openai() as client:
        await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    # One take of four left 12, above half: it used to stay at 12 until a take left fewer
    # than 8, so a sustained load met a half-empty reserve and signed in on its path.
    await services.guests._refill
    assert await services.redis.llen(services.keys.guests) == 16
    signins = [r for r in gw.fake.requests if r.path.startswith("/api/v1/auths")]
    assert len(signins) == 16 + 4


async def test_redis_unreachable_fails_fast_and_guests_keep_working(gateway):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    gw = await gateway(
        "home", "guest_auth", OK, redis_url=dead_redis, anonymous_mode=False, zai_tokens=TOKENS[0]
    )
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 503 and info.value.code == "state_unavailable"
    code = (await AsyncHTTPClient().fetch(gw.url + "/readyz", raise_error=False)).code
    assert code == 503
    gw = await gateway(
        "home",
        "guest_auth",
        OK,
        redis_url=dead_redis,
        anonymous_mode=True,
        zai_tokens=TOKENS[0],
        guest_reserve=2,
    )
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"


async def test_concurrent_admin_add_and_remove_of_one_token_never_fail(gateway):
    gw = await gateway("home", "guest_auth_user_role", OK, admin_token=ADMIN, anonymous_mode=False)
    http = AsyncHTTPClient(force_instance=True, max_clients=80)
    tid = token_id(TOKENS[0])

    async def change(action: str) -> int:
        response = await http.fetch(
            gw.url + "/v1/token-pool/update",
            method="POST",
            headers={"Authorization": f"Bearer {ADMIN}"},
            body=json.dumps({"action": action, "tokens": [TOKENS[0]]}),
            raise_error=False,
        )
        return response.code

    try:
        codes = await asyncio.gather(*(change(("add", "remove")[i % 2]) for i in range(80)))
    finally:
        http.close()
    assert codes == [200] * 80
    services = gw.services
    present = await services.redis.hexists(services.keys.tokens, tid)
    info = await services.redis.exists(services.keys.token(tid))
    assert bool(info) == bool(present)  # whole or gone, never half
    code, status = await admin(gw, "POST", "/v1/token-pool/update", [TOKENS[0]])
    assert code == 200 and [r["state"] for r in status["tokens"]] == ["active"]
