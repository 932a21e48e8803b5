"""The self-check (``GET /v1/upstream/check``, admin) against the fake upstream: every step
of a healthy exchange is named and ok, and each fault the fake can produce is named at the
step where it breaks, in plain words, with no token or proxy password in the answer."""

import asyncio
import re
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.accounts import ADMIN, admin
from tests.redis_server import free_port

OK = "stream_glm5_plain_thinking"
STEPS = ["breaker", "home page", "config", "sign-in", "captcha", "completion"]


def steps_of(report: dict, route: int = 0) -> dict:
    return {s["name"]: s for s in report["routes"][route]["steps"]}


async def test_a_healthy_upstream_passes_every_step(gateway):
    gw = await gateway("home", "guest_auth", OK, admin_token=ADMIN)
    code, report = await admin(gw, "GET", "/v1/upstream/check?complete=1")
    assert code == 200 and report["ok"] is True, report
    route = report["routes"][0]
    assert route["id"] == "direct" and route["ok"] is True
    assert [s["name"] for s in route["steps"]] == STEPS
    steps = steps_of(report)
    assert "prod-fe-1.1.95" in steps["home page"]["detail"]
    assert "does not require a captcha" in steps["config"]["detail"]
    assert "one-token completion answered" in steps["completion"]["detail"]
    code, report = await admin(gw, "GET", "/v1/upstream/check")  # no completion unless asked
    assert [s["name"] for s in report["routes"][0]["steps"]] == STEPS[:-1]
    assert len(gw.completions_seen()) == 1


def _waf(gw) -> None:
    gw.fake.waf_sources = {"127.0.0.1"}


def _captcha(gw) -> None:
    gw.fake.captcha_valid = {"only-this-one"}


FAULTS = [
    # (what is broken, cassettes, how to break the fake, settings, broken step, words)
    ("no home page", ("guest_auth", OK), None, {}, "home page", "HTTP 404"),
    ("no version", ("guest_auth", OK, "error_http_405_waf"), None, {}, "home page", "HTTP 404"),
    ("sign-in", ("home", OK), None, {}, "sign-in", "HTTP 404"),
    ("waf", ("home", "guest_auth", OK), _waf, {}, "completion", "waf_blocked"),
    ("captcha", ("home", "guest_auth", OK), _captcha, {}, "captcha", "POST /v1/captcha"),
    (
        "dead proxy",
        ("home", "guest_auth", OK),
        None,
        {"upstream_proxies": f"http://user:pw-secret-9@127.0.0.1:{free_port()}"},
        "home page",
        "through http://***@127.0.0.1",
    ),
]


@pytest.mark.parametrize(
    "cassettes,breaks,settings,step,words", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
async def test_each_fault_is_named_at_its_step(gateway, cassettes, breaks, settings, step, words):
    gw = await gateway(*cassettes, admin_token=ADMIN, **settings)
    if breaks is not None:
        breaks(gw)
    code, report = await admin(gw, "GET", "/v1/upstream/check?complete=1")
    assert code == 200 and report["ok"] is False and report["routes"][0]["ok"] is False
    steps = steps_of(report)
    assert steps[step]["ok"] is False and words in steps[step]["detail"], steps[step]
    broken = [s["name"] for s in report["routes"][0]["steps"] if not s["ok"]]
    assert broken[0] == step, broken  # the first broken step is the one at fault
    assert "pw-secret-9" not in str(report)


async def test_only_the_admin_may_run_it(gateway):
    gw = await gateway("home", "guest_auth", OK, admin_token=ADMIN)
    code, _ = await admin(gw, "GET", "/v1/upstream/check", token="wrong")
    assert code == 401
    assert not gw.fake.requests  # nothing was sent upstream


def _step_gauges(metrics: str) -> dict[str, float]:
    found = re.findall(
        r'zai_gateway_upstream_step_ok\{route="([^"]+)",step="([^"]+)"\} (\S+)', metrics
    )
    return {step: float(value) for _, step, value in found}


async def test_the_background_check_runs_on_one_replica_and_every_replica_exports_it(
    gateway, real_redis_server
):
    """SELF_CHECK_INTERVAL: one probe per interval across two replicas (a Redis lock), its
    report shared, so both replicas' /metrics show each step; a WAF block flips the
    completion step to 0 while readiness stays 200 (restarting pods would fix nothing)."""
    common = {
        "redis_url": real_redis_server.url,
        "redis_prefix": "self-check-test:",
        "self_check_interval": 1.0,
        "admin_token": ADMIN,
    }
    first = await gateway("home", "guest_auth", OK, **common)
    second = await gateway(zai_base_url=first.fake.base_url, **common)
    started = time.monotonic()
    await asyncio.sleep(4.5)
    probes = len(first.completions_seen())
    # the lock lasts 0.9 interval: at most one probe per 0.9 s over both replicas (unlocked,
    # each replica would probe every second: about 8)
    assert 3 <= probes <= (time.monotonic() - started) / 0.9 + 1, probes
    for gw in (first, second):
        metrics = (await AsyncHTTPClient().fetch(gw.url + "/metrics")).body.decode()
        assert _step_gauges(metrics) == dict.fromkeys(STEPS, 1.0), metrics
        at = re.search(r"^zai_gateway_upstream_check_timestamp_seconds (\S+)$", metrics, re.M)
        assert time.time() - float(at[1]) < 3
    _waf(first)  # completions from this address now get the WAF's block page
    await asyncio.sleep(2.5)
    for gw in (first, second):
        metrics = (await AsyncHTTPClient().fetch(gw.url + "/metrics")).body.decode()
        gauges = _step_gauges(metrics)
        assert gauges["completion"] == 0.0 and gauges["home page"] == 1.0, gauges
        ready = await AsyncHTTPClient().fetch(gw.url + "/readyz", raise_error=False)
        assert ready.code == 200
