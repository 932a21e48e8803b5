"""Pacing (issue 14, PROTOCOL.md section 6.3): three gateways sharing a real redis-server keep
the floor between upstream calls on a route, measured where the calls arrive (one fake
upstream for all); every call counts (sign-in, config, completion); the wait shows in
/metrics; a call that would wait longer than PACING_MAX_WAIT is a 429 ``pacing_backlog`` with
Retry-After, and nothing is sent for it. ``PACING_TOKEN_MIN_GAP_MS`` holds calls made with one
pooled token that far apart across the replicas, and calls with different tokens are not held
to it."""

import asyncio
import itertools
import re

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from server.zai.client import _paced
from server.zai.identity import Credential
from state.keys import Keys
from state.pacing import Pacer
from tests.accounts import TOKENS, jwt, pool_gateway

OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]
GAP_MS, JITTER_MS = 150, 50


async def _ask(gw) -> str:
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        return reply.choices[0].message.content


async def test_three_replicas_keep_the_gap_between_every_upstream_call(gateway, real_redis_server):
    common = {
        "redis_url": real_redis_server.url,
        "redis_prefix": "pacing-test:",
        "pacing_min_gap_ms": GAP_MS,
        "pacing_jitter_ms": JITTER_MS,
    }
    first = await gateway("home", "guest_auth", OK, **common)
    second = await gateway(zai_base_url=first.fake.base_url, **common)  # the same upstream
    third = await gateway(zai_base_url=first.fake.base_url, **common)

    answers = await asyncio.gather(*(_ask(gw) for gw in (first, second, third) * 2))
    assert all(answers)
    arrived = sorted(r.at for r in first.fake.requests)
    assert len(arrived) >= 13  # home, then a guest sign-in and a completion per request
    gaps = [round((b - a) * 1000) for a, b in itertools.pairwise(arrived)]
    # Slots are booked at least GAP_MS apart on the Redis clock; at the upstream each gap may
    # differ by the event-loop lag of the two calls (three gateways and the fake share one loop
    # on a busy machine), but the whole run cannot be shorter than the floor allows. Unpaced,
    # these calls arrive within a few ms of each other.
    assert sum(gaps) >= (GAP_MS + JITTER_MS / 4) * len(gaps) - 20, gaps
    assert min(gaps) >= GAP_MS / 2, gaps
    assert max(gaps) - min(gaps) >= 5, gaps  # the jitter: not one fixed rhythm
    metrics = (await AsyncHTTPClient().fetch(first.url + "/metrics")).body.decode()
    count = re.search(r'zai_gateway_pacing_wait_seconds_count\{route="direct"\} (\S+)', metrics)
    total = re.search(r'zai_gateway_pacing_wait_seconds_sum\{route="direct"\} (\S+)', metrics)
    assert float(count[1]) >= 6 and float(total[1]) > 0.5


async def test_a_wait_past_the_limit_is_429_and_sends_nothing(gateway):
    gw = await pool_gateway(
        gateway,
        tokens=TOKENS[:1],
        pool_max_concurrency=0,  # one token, three requests at once: pacing, not the cap, decides
        zai_fe_version="prod-fe-1.1.95",
        zai_captcha="off",
        pacing_min_gap_ms=1000,
        pacing_jitter_ms=0,
        pacing_max_wait=1.2,
    )
    await gw.services.redis.delete(Keys("zai:").pace("direct"))  # forget the start-up check
    before = len(gw.completions_seen())

    async def ask():
        async with gw.openai() as client:
            try:
                await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
            except openai.APIStatusError as err:
                return err
            return None

    outcomes = await asyncio.gather(ask(), ask(), ask())  # slots at 0 s, 1 s; 2 s is too far
    refused = [err for err in outcomes if err is not None]
    assert len(refused) == 1 and len(gw.completions_seen()) == before + 2
    err = refused[0]
    assert err.status_code == 429 and err.code == "pacing_backlog"
    assert err.response.headers["Retry-After"] == "2"
    assert "PACING_MAX_WAIT" in err.message and "UPSTREAM_PROXIES" in err.message


@pytest.mark.parametrize("wait_limit", [5.0])
async def test_the_soonest_route_is_booked_and_a_refusal_books_nothing(redis, wait_limit):
    pacer = Pacer(redis, Keys("p:"), min_gap_ms=300, jitter_ms=0, max_wait=wait_limit)
    assert await pacer.reserve(["a", "b"]) == (0, 0)  # a tie goes to the first
    index, _ = await pacer.reserve(["a", "b"])
    assert index == 1  # b is free now, a only in 0.3 s
    index, wait = await pacer.reserve(["a", "b"])
    assert index == 0 and 0.25 <= wait <= 0.3
    tight = Pacer(redis, Keys("p:"), min_gap_ms=300, jitter_ms=0, max_wait=0.1)
    index, wait = await tight.reserve(["b"])
    assert index == -1 and 0.25 <= wait <= 0.3
    index, wait = await tight.reserve(["b"])  # the refusal did not move b's next slot
    assert index == -1 and 0.2 <= wait <= 0.3


TOKEN_GAP_MS = 600


async def test_calls_with_one_pooled_token_keep_its_gap_across_replicas(gateway, real_redis_server):
    tokens = [jwt(7), jwt(8)]  # this test's own: their slots are not shared with another test
    common = {
        "tokens": tokens,
        "redis_url": real_redis_server.url,
        "redis_prefix": "pacing-token-test:",
        "pool_max_concurrency": 0,  # two tokens, six requests at once: pacing decides
        "zai_fe_version": "prod-fe-1.1.95",
        "zai_captcha": "off",
        "pacing_token_min_gap_ms": TOKEN_GAP_MS,  # no route gap: only the token's own holds
    }
    first = await pool_gateway(gateway, **common)
    second = await pool_gateway(gateway, zai_base_url=first.fake.base_url, **common)
    third = await pool_gateway(gateway, zai_base_url=first.fake.base_url, **common)

    answers = await asyncio.gather(*(_ask(gw) for gw in (first, second, third) * 2))
    assert all(answers)

    def token_of(seen) -> str:
        bearer = (seen.headers.get("Authorization") or "").removeprefix("Bearer ")
        return bearer or seen.query.get("token", "")

    calls = sorted((r.at, token_of(r)) for r in first.fake.requests if token_of(r) in tokens)
    by_token = {t: [at for at, who in calls if who == t] for t in tokens}
    assert all(len(ats) >= 3 for ats in by_token.values()), by_token  # both tokens were used
    for ats in by_token.values():
        gaps = [round((b - a) * 1000) for a, b in itertools.pairwise(ats)]
        # Booked TOKEN_GAP_MS apart on the Redis clock; at the fake each gap may differ by
        # the event-loop lag of its two calls, a few ms, never hundreds. Unpaced, a token's
        # calls arrive within a few ms of each other.
        assert min(gaps) >= TOKEN_GAP_MS - 50, gaps
    # Calls with different tokens are not held to the gap: the two tokens' first completions
    # leave together (no route gap is set).
    across = [round((b[0] - a[0]) * 1000) for a, b in itertools.pairwise(calls) if a[1] != b[1]]
    assert min(across) < TOKEN_GAP_MS / 2, across


async def test_a_token_floor_holds_on_every_route_and_a_guest_has_none(redis):
    pacer = Pacer(redis, Keys("pt:"), min_gap_ms=0, jitter_ms=0, max_wait=5.0, token_gap_ms=300)
    assert await pacer.reserve(["a"], "t1") == (0, 0)
    index, wait = await pacer.reserve(["b"], "t1")  # another route: the token's floor holds
    assert index == 0 and 0.25 <= wait <= 0.3
    assert await pacer.reserve(["b"], "t2") == (0, 0)  # another token is not held by t1
    assert await pacer.reserve(["b"]) == (0, 0)  # no token (a guest, a sign-in): route only
    tight = Pacer(redis, Keys("pt:"), min_gap_ms=0, jitter_ms=0, max_wait=0.1, token_gap_ms=300)
    index, wait = await tight.reserve(["c"], "t1")
    assert index == -1 and wait > 0.1
    assert await tight.reserve(["c"]) == (0, 0)  # the refusal booked nothing on route c
    # A call its token holds back leaves the route's earlier slots to other tokens
    both = Pacer(redis, Keys("pq:"), min_gap_ms=100, jitter_ms=0, max_wait=5.0, token_gap_ms=500)
    assert await both.reserve(["r"], "t1") == (0, 0)
    index, held = await both.reserve(["r"], "t1")
    assert index == 0 and 0.45 <= held <= 0.5  # t1's floor, not the route's
    index, wait = await both.reserve(["r"], "t2")
    assert index == 0 and 0.05 <= wait <= 0.1  # the route's next slot, before t1's
    index, wait = await both.reserve(["r"], "t3")
    assert index == 0 and 0.15 <= wait <= 0.2
    guest = Credential("guest-token", "g", role="guest")
    assert _paced(guest) == "" and _paced(Credential("user-token", "u", role="user"))
