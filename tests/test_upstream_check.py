"""The self-check (``GET /v1/upstream/check``, admin) against the fake upstream: every step
of a healthy exchange is named and ok, and each fault the fake can produce is named at the
step where it breaks, in plain words, with no token or proxy password in the answer."""

import pytest

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
