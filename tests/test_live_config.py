"""The live upstream config (``GET/PUT/DELETE /v1/upstream/config``): a moving value changed
on one replica reaches every replica within ``UPSTREAM_CONFIG_POLL`` seconds, with no
restart, and what needs a restart is refused as such."""

import asyncio
import itertools
import time
import uuid

import openai
import pytest

from server.zai.request import COMPLETIONS_PATH
from tests.accounts import ADMIN, admin

OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]
NEW_VERSION = "prod-fe-1.2.0"
NEW_KEY = "live-config-test-signature-key-7f3a9c"  # the upstream's next signing key
CAPTCHA_PARAM = "live-config-captcha-param-1"
MOVED = "/api/v3/chat/completions"
POLL = 0.5


def _common(redis_url: str = "", **extra: object) -> dict:
    return {
        "admin_token": ADMIN,
        "redis_url": redis_url,
        "redis_prefix": f"live-{uuid.uuid4().hex[:8]}:",  # no other test's overrides
        "zai_fe_version": "prod-fe-1.1.95",  # pinned: the home page cannot teach a new one
        "upstream_config_poll": POLL,
        **extra,
    }


async def _ask(gw) -> str:
    async with gw.openai() as client:
        answer = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    return answer.choices[0].message.content


async def _served_within(gw, seconds: float) -> float:
    """Seconds until a completion through ``gw`` succeeds (asking every 0.1 s)."""
    began = time.monotonic()
    while True:
        try:
            await _ask(gw)
            return time.monotonic() - began
        except openai.APIStatusError:
            if time.monotonic() - began > seconds:
                raise
            await asyncio.sleep(0.1)


async def test_a_new_fe_version_put_on_one_replica_serves_through_every_replica(
    gateway, real_redis_server
):
    common = _common(real_redis_server.url)
    first = await gateway("home", "guest_auth", OK, **common)
    others = [await gateway(zai_base_url=first.fake.base_url, **common) for _ in range(2)]
    first.fake.fe_version = NEW_VERSION  # the upstream's new release; its home page lags
    for gw in (first, *others):
        with pytest.raises(openai.APIStatusError) as info:
            await _ask(gw)
        assert info.value.status_code == 502 and info.value.code == "version_outdated"
        assert "/v1/upstream/config" in info.value.message

    code, config = await admin(first, "PUT", "/v1/upstream/config", {"zai_fe_version": NEW_VERSION})
    assert code == 200
    assert config["live"]["zai_fe_version"] == {
        "value": NEW_VERSION,
        "source": "live",
        "moves": "dialect",
    }
    assert config["live"]["pacing_min_gap_ms"]["source"] == "environment"
    assert config["restart"]["zai_base_url"] == first.fake.base_url  # shown, not settable
    assert await _served_within(first, 0) == pytest.approx(0, abs=1)  # its own: at once
    for gw in others:  # the others within a poll (plus a loaded machine's slack)
        await _served_within(gw, POLL + 4)
    sent = [r.headers.get("X-FE-Version") for r in first.completions_seen()]
    assert sent.count(NEW_VERSION) >= 3 and sent[-1] == NEW_VERSION
    for gw in others:  # each replica says what it runs with
        _, seen = await admin(gw, "GET", "/v1/upstream/config")
        assert seen["rev"] == config["rev"] and seen["live"]["zai_fe_version"]["source"] == "live"


async def test_signature_key_paths_and_headers_change_live_and_delete_puts_them_back(gateway):
    gw = await gateway("home", "guest_auth", OK, **_common())
    gw.fake.signature_key = NEW_KEY
    gw.fake.moved = {COMPLETIONS_PATH: MOVED}
    with pytest.raises(openai.APIStatusError):
        await _ask(gw)  # the old path is gone
    assert gw.fake.requests[-1].path == COMPLETIONS_PATH

    change = {
        "zai_signature_key": NEW_KEY,
        "zai_paths": {"completions": MOVED},
        "zai_user_agent": "Mozilla/5.0 LiveConfigTest/2",
    }
    code, config = await admin(gw, "PUT", "/v1/upstream/config", change)
    assert code == 200 and NEW_KEY not in str(config)  # masked
    assert config["live"]["zai_signature_key"]["value"].startswith(NEW_KEY[:6])
    assert await _ask(gw)
    sent = gw.completions_seen()[-1]
    assert sent.headers["User-Agent"] == "Mozilla/5.0 LiveConfigTest/2"
    assert gw.fake.requests[-1].path == COMPLETIONS_PATH  # served as the moved path

    code, config = await admin(gw, "PUT", "/v1/upstream/config", {"zai_user_agent": None})
    assert code == 200 and config["live"]["zai_user_agent"]["source"] == "environment"
    assert config["live"]["zai_paths"]["source"] == "live"  # the others stay
    code, config = await admin(gw, "DELETE", "/v1/upstream/config")
    assert code == 200 and {f["source"] for f in config["live"].values()} == {"environment"}
    with pytest.raises(openai.APIStatusError):
        await _ask(gw)  # the environment's path and key again


async def test_captcha_switch_is_live(gateway):
    gw = await gateway("home", "guest_auth", OK, **_common(zai_captcha="off"))
    gw.fake.captcha_valid = {CAPTCHA_PARAM}  # the gate went up upstream
    code, _ = await admin(gw, "POST", "/v1/captcha", {"params": [CAPTCHA_PARAM]})
    assert code == 200
    with pytest.raises(openai.APIStatusError) as info:
        await _ask(gw)  # off: sent without the param in stock
    assert info.value.status_code == 503 and info.value.code == "captcha_required"
    code, _ = await admin(gw, "PUT", "/v1/upstream/config", {"zai_captcha": "on"})
    assert code == 200 and await _ask(gw)
    assert gw.fake.captcha_used == [CAPTCHA_PARAM]


async def test_pacing_set_live_holds_the_gap_across_replicas(gateway, real_redis_server):
    common = _common(real_redis_server.url)
    first = await gateway("home", "guest_auth", OK, **common)
    second = await gateway(zai_base_url=first.fake.base_url, **common)
    gap = 300
    code, config = await admin(
        first, "PUT", "/v1/upstream/config", {"pacing_min_gap_ms": gap, "pacing_jitter_ms": 0}
    )
    assert code == 200
    deadline = time.monotonic() + POLL + 4
    while (await admin(second, "GET", "/v1/upstream/config"))[1]["rev"] != config["rev"]:
        assert time.monotonic() < deadline, "the second replica never took the change"
        await asyncio.sleep(0.1)
    before = len(first.fake.requests)
    assert all(await asyncio.gather(*(_ask(gw) for gw in (first, second) * 3)))
    arrived = sorted(r.at for r in first.fake.requests[before:])
    gaps = [round((b - a) * 1000) for a, b in itertools.pairwise(arrived)]
    # Booked at least `gap` apart on the Redis clock; at the fake each may differ by the
    # loop lag of two calls, but the run cannot be shorter than the floor allows.
    assert len(gaps) >= 5 and sum(gaps) >= gap * len(gaps) - 20, gaps
    assert min(gaps) >= gap / 2, gaps


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        ({"zai_base_url": "https://elsewhere.example"}, "zai_base_url", "restart"),
        ({"upstream_proxies": ["http://p:1"]}, "upstream_proxies", "restart"),
        ({"pacing_min_gap_ms": -5}, "pacing_min_gap_ms", "greater than or equal to 0"),
        ({"zai_fe_version": "1.2.0"}, "zai_fe_version", "prod-fe-"),
        ({"zai_paths": {"completion": "/x"}}, "zai_paths", "unknown endpoint"),
        ({"zai_captcha": "sometimes"}, "zai_captcha", "'auto', 'on' or 'off'"),
        ({"no_such_setting": 1}, "no_such_setting", "not a live upstream setting"),
        ([], None, "JSON object"),
        ({}, None, "JSON object"),
    ],
)
async def test_a_bad_change_is_a_400_naming_the_field_and_stores_nothing(
    gateway, body, param, said
):
    gw = await gateway("home", **_common())
    _, before = await admin(gw, "GET", "/v1/upstream/config")
    code, answer = await admin(gw, "PUT", "/v1/upstream/config", body)
    assert code == 400 and answer["error"]["param"] == param
    assert said in answer["error"]["message"]
    _, after = await admin(gw, "GET", "/v1/upstream/config")
    assert after == before


async def test_only_the_admin_reads_or_changes_it(gateway):
    gw = await gateway("home", **_common())
    for method, body in (("GET", None), ("PUT", {"zai_captcha": "off"}), ("DELETE", None)):
        code, _ = await admin(gw, method, "/v1/upstream/config", body, token="wrong")
        assert code == 401
    plain = await gateway("home")  # no ADMIN_TOKEN: the admin routes do not exist
    code, _ = await admin(plain, "GET", "/v1/upstream/config")
    assert code == 404
