"""Token rotation (issue 15 item 7; PROTOCOL.md section 6.8).

The swap itself on fakeredis and on a real redis-server (compare-and-set on the old token,
one winner under a race, the old id's place, info and leases carried over, a request still
in flight on the old token releasing into nothing); then through the gateway: the fake's
``GET /api/v1/auths/`` answers another token, the health check swaps it in and the next
completion through the ``openai`` SDK is sent with the new one; and what a check must never
count as a dead token (network errors, 5xx, the WAF's page) next to what it must (401, 403).
"""

import asyncio

import pytest

from state.keys import Keys, token_id
from state.pool import Pick
from state.rotation import TokenRotation
from tests.accounts import ADMIN, TOKENS, admin
from tests.test_state_pool import alive, make_pool

OLD, NEW, OTHER = "tok-old-0123456789abcdef", "tok-new-0123456789abcdef", "tok-3rd-0123456789ab"


async def test_replace_moves_the_token_and_marks_the_old_one(redis):
    pool = make_pool(redis)
    await alive(pool, [OLD, TOKENS[1]])
    pick = await pool.acquire()
    assert isinstance(pick, Pick)
    old_id = token_id(OLD)
    if pick.lease.token_id != old_id:  # make the old one the token with a lease in flight
        await pool.release(pick.lease, "ok")
        pick = await pool.acquire()
    assert pick.lease.token_id == old_id
    score = await redis.zscore("t:{pool}:rotation", old_id)
    rotation = TokenRotation(redis, Keys("t:"), grace=60)
    new_id = await rotation.replace(OLD, NEW)
    assert new_id == token_id(NEW)
    tokens = await pool.tokens()
    assert OLD not in tokens.values() and tokens[new_id] == NEW
    assert await redis.zscore("t:{pool}:rotation", new_id) == score
    assert await redis.zscore("t:{pool}:rotation", old_id) is None
    info = await redis.hgetall(f"t:{{pool}}:token:{new_id}")
    assert info["role"] == "user" and info["rotated_from"] == old_id
    assert await redis.exists(f"t:{{pool}}:token:{old_id}") == 0
    assert await redis.zcard(f"t:{{pool}}:leases:{new_id}") == 1  # the request in flight counts
    assert await rotation.rotated_to(old_id) == new_id
    assert 50_000 < await redis.pttl(f"t:{{pool}}:rotated:{old_id}") <= 60_000
    # the request in flight on the old token fails: it releases into nothing
    await pool.release(pick.lease, "dead", "401 on the old token")
    states = {row.id: row.state for row in await pool.status()}
    assert states == {new_id: "active", token_id(TOKENS[1]): "active"}


async def test_replace_is_compare_and_set_on_the_old_token(redis):
    pool = make_pool(redis)
    await alive(pool, [OLD])
    rotation = TokenRotation(redis, Keys("t:"))
    results = await asyncio.gather(rotation.replace(OLD, NEW), rotation.replace(OLD, OTHER))
    assert sorted(results, key=str) == sorted([token_id(NEW), None], key=str) or sorted(
        results, key=str
    ) == sorted([token_id(OTHER), None], key=str)
    tokens = await pool.tokens()
    assert len(tokens) == 1 and OLD not in tokens.values()
    assert await rotation.replace(OLD, "tok-late-0123456789abc") is None  # nothing left to swap
    assert len(await pool.tokens()) == 1


async def test_a_cooling_or_dead_token_keeps_its_state_under_the_new_id(redis):
    pool = make_pool(redis, cooldown_base=30, cooldown_cap=60)
    await alive(pool, [OLD])
    pick = await pool.acquire()
    await pool.release(pick.lease, "cooldown", "5xx")
    await TokenRotation(redis, Keys("t:")).replace(OLD, NEW)
    (row,) = await pool.status()
    assert row.id == token_id(NEW) and row.state == "cooling" and row.failures == 1


# Through the gateway


async def pooled(gateway, **overrides):
    gw = await gateway(
        "home",
        "guest_auth_user_role",
        "stream_glm5_plain_thinking",
        zai_tokens=TOKENS[0],
        anonymous_mode=False,
        admin_token=ADMIN,
        **overrides,
    )
    return gw


def account(token: str) -> dict:
    return {"id": "user-0", "role": "user", "name": "U", "token": token, "email": "u0@x"}


async def test_a_rotated_token_is_swapped_in_and_used(gateway):
    gw = await pooled(gateway)
    rotated = TOKENS[0][:-8] + "ROTATED1"
    gw.fake.accounts[TOKENS[0]] = account(rotated)
    code, report = await admin(gw, "POST", "/v1/token-pool/health-check")
    assert code == 200
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-5.1", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content
    assert gw.completions_seen()[-1].query["token"] == rotated
    code, status = await admin(gw, "GET", "/v1/token-pool/status")
    (row,) = status["tokens"]
    assert row["id"] == token_id(rotated) and row["state"] == "active"
    assert "rotated by the upstream" in row["reason"]
    marker = f"zai:{{pool}}:rotated:{token_id(TOKENS[0])}"
    assert await gw.services.redis.get(marker) == token_id(rotated)
    assert TOKENS[0] not in str(report) and rotated not in str(status)


@pytest.mark.parametrize("answer", [500, 503, 429, "waf", "down"])
async def test_a_check_that_gets_no_verdict_never_kills_the_token(gateway, answer):
    gw = await pooled(gateway, upstream_connect_timeout=1)
    if answer == "down":
        await gw.fake.close()
    else:
        gw.fake.accounts[TOKENS[0]] = answer  # "waf": a 403 with the block page's HTML
    (result,) = await gw.services.health_check()
    assert result.verdict == "unknown"
    (row,) = await gw.services.pool.status()
    assert row.state == "active" and row.id == token_id(TOKENS[0])


@pytest.mark.parametrize("status", [401, 403])
async def test_the_upstreams_invalid_kills_the_token(gateway, status):
    gw = await pooled(gateway)
    gw.fake.accounts[TOKENS[0]] = status  # with a JSON detail, as the upstream says it
    (result,) = await gw.services.health_check()
    assert result.verdict == "dead"
    (row,) = await gw.services.pool.status()
    assert row.state == "dead"
