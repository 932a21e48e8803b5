"""Every failure reaches an ``openai`` SDK client as the right exception, status and words.

Upstream failures (PROTOCOL.md section 5) before the first byte are retried with a new guest
when the table allows it; the client's own mistakes are 4xx naming the field; a stream that
breaks midway ends with an error event; a client that hangs up stops the upstream fetch.
"""

import asyncio

import msgspec
import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import API_KEY

BASE = ("home", "guest_auth")
OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]

# cassette, exception, status, code, words in the message, completion attempts
FAILURES = [
    ("error_http_500", openai.InternalServerError, 502, "unavailable", "unavailable", 3),
    ("error_http_401", openai.APIStatusError, 502, "token_rejected", "rejected its access", 3),
    ("error_http_405_waf", openai.APIStatusError, 503, "waf_blocked", "WAF", 1),
    ("error_http_426", openai.APIStatusError, 502, "version_outdated", "ZAI_FE_VERSION", 2),
    ("error_inband_426", openai.APIStatusError, 502, "version_outdated", "outdated", 2),
    (
        "error_http_400_signature",
        openai.APIStatusError,
        502,
        "signature_rejected",
        "ZAI_SIGNATURE_KEY",
        2,
    ),
    ("error_http_429", openai.RateLimitError, 429, "rate_limited", "rate limiting", 3),
    ("error_inband_concurrency", openai.RateLimitError, 429, "rate_limited", "busy", 3),
    (
        "error_inband_model_403",
        openai.PermissionDeniedError,
        403,
        "model_forbidden",
        "user token",
        1,
    ),
    ("error_inband_captcha", openai.APIStatusError, 503, "captcha_required", "captcha", 1),
]


@pytest.mark.parametrize(("cassette", "exc", "status", "code", "words", "tries"), FAILURES)
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failure_shapes(gateway, cassette, exc, status, code, words, tries, stream):
    gw = await gateway(*BASE, cassette)
    async with gw.openai() as client:
        with pytest.raises(exc) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO, stream=stream)
    err = info.value
    assert err.status_code == status
    assert err.code == code
    assert words in err.message
    assert len(gw.completions_seen()) == tries
    assert "eyJ" not in err.message  # no token in an error
    # a guest refused a model stays refused; every other row may pass on another try
    assert err.response.headers["x-should-retry"] == ("false" if status == 403 else "true")


async def test_retry_with_new_guest_then_success(gateway):
    gw = await gateway(*BASE, "error_http_500", OK)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].message.content.startswith("Hi there!")
    assert len(gw.completions_seen()) == 2
    assert len([r for r in gw.fake.requests if r.path == "/api/v1/auths/"]) == 2


@pytest.mark.parametrize("cassette", ["error_http_426", "error_inband_426"])
async def test_version_426_rereads_home_page_and_retries(gateway, cassette):
    gw = await gateway(*BASE, cassette, OK)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].finish_reason == "stop"
    assert len([r for r in gw.fake.requests if r.path == "/"]) == 2


async def test_stale_pinned_version_is_refused_by_upstream_checks(gateway):
    gw = await gateway(*BASE, OK, zai_fe_version="prod-fe-0.0.1")
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.code == "version_outdated"


async def test_failure_midway_ends_stream_with_error_event(gateway):
    gw = await gateway(*BASE, OK, cut_after=10)
    async with gw.openai() as client:
        stream = await client.chat.completions.create(model="GLM-4.5", messages=HELLO, stream=True)
        got = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                got.append(chunk)
    assert got and got[0].choices[0].delta.role == "assistant"
    assert "closed" in info.value.message
    assert len(gw.completions_seen()) == 1  # bytes were sent: no retry


async def test_upstream_unreachable_is_a_clean_502(gateway):
    gw = await gateway(*BASE, OK, zai_base_url="http://127.0.0.1:9", upstream_retries=1)
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 502 and "cannot connect" in info.value.message


async def test_client_hanging_up_stops_the_upstream_fetch(gateway):
    gw = await gateway(*BASE, "stream_glm46_details_thinking", pace=0.02)  # ~11 s if read whole
    async with gw.openai() as client:
        stream = await client.chat.completions.create(model="GLM-4.6", messages=HELLO, stream=True)
        async for _ in stream:
            break
        await stream.close()
    started = asyncio.get_running_loop().time()
    await gw.fake.wait_aborted(1, timeout=3)
    assert asyncio.get_running_loop().time() - started < 3
    assert gw.fake.streams_completed == 0


async def test_keys(gateway):
    gw = await gateway(*BASE, OK)
    async with gw.openai(api_key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    assert info.value.status_code == 401 and "API key" in info.value.message
    body = b'{"model": "GLM-4.5", "messages": [{"role": "user", "content": "x"}]}'
    status, answer = await raw_post(gw, body, {"Authorization": ""})
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    status, _ = await raw_post(gw, body, {"Authorization": "", "x-api-key": API_KEY})
    assert status == 200
    assert len(gw.completions_seen()) == 1


async def test_unknown_model_lists_the_available_ones(gateway):
    gw = await gateway(*BASE, OK)
    async with gw.openai() as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert info.value.code == "model_not_found" and "GLM-4.5-Thinking" in info.value.message


async def raw_post(gw, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    head = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = await AsyncHTTPClient().fetch(
        gw.url + "/v1/chat/completions",
        method="POST",
        body=body,
        headers={**head, **(headers or {})},
        raise_error=False,
    )
    return response.code, msgspec.json.decode(response.body)


BAD_BODIES = [
    (b"{not json", "invalid_json", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "invalid_request", "model"),
    (b'{"model": "GLM-4.5"}', "invalid_request", "messages"),
    (b'{"model": "GLM-4.5", "messages": []}', "invalid_request", "messages"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "invalid_request", "model"),
    (
        b'{"model": "GLM-4.5", "messages": [{"role": "user", "content": 5}]}',
        "invalid_request",
        "messages[0].content",
    ),
    (
        b'{"model": "GLM-4.5", "messages": [{"role": "wizard", "content": "x"}]}',
        "invalid_request",
        "messages[0].role",
    ),
    (
        b'{"model": "GLM-4.5", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
        "invalid_request",
        "temperature",
    ),
    (
        b'{"model": "GLM-4.5", "messages": [{"role": "user", "content": "x"}], "n": 2}',
        "invalid_request",
        "n",
    ),
    (
        b'{"model": "GLM-4.5", "messages": [{"role": "user", "content": [{"type": "image_url", '
        b'"image_url": {"url": "http://x/y.png"}}]}]}',
        "invalid_request",
        "messages[0].content[0]",
    ),
]


@pytest.mark.parametrize(("body", "code", "param"), BAD_BODIES)
async def test_bad_input_is_a_4xx_naming_the_field(gateway, body, code, param):
    gw = await gateway(*BASE, OK)
    status, answer = await raw_post(gw, body)
    assert status == 400
    assert answer["error"]["code"] == code
    assert answer["error"]["param"] == param
    if param:
        assert param in answer["error"]["message"]
    assert gw.completions_seen() == []


async def test_unknown_route_and_method_are_openai_shaped(gateway):
    gw = await gateway(*BASE, OK)
    client = AsyncHTTPClient()
    missing = await client.fetch(gw.url + "/v1/nothing", raise_error=False)
    assert missing.code == 404
    assert msgspec.json.decode(missing.body)["error"]["code"] == "not_found"
    wrong = await client.fetch(gw.url + "/v1/chat/completions", raise_error=False)
    assert wrong.code == 405
    assert msgspec.json.decode(wrong.body)["error"]["code"] == "method_not_allowed"


async def test_body_over_the_limit_is_413(gateway):
    gw = await gateway(*BASE, OK, max_body_bytes=2048)
    status, answer = await raw_post(gw, b'{"model": "' + b"x" * 3000 + b'"}')
    assert status == 413 and answer["error"]["code"] == "payload_too_large"


async def test_models_list_and_retrieve(gateway):
    gw = await gateway(*BASE, OK)
    async with gw.openai() as client:
        models = [m.id async for m in client.models.list()]
        one = await client.models.retrieve("glm-4.5-thinking")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
    assert {"GLM-4.5", "GLM-4.5-Thinking", "GLM-4.5-Search", "GLM-4.5-Air", "GLM-5.1"} <= set(
        models
    )
    assert one.id == "GLM-4.5-Thinking" and one.owned_by == "z.ai"


async def test_guest_sign_in_falls_back_to_the_guest_route(gateway):
    gw = await gateway("home", "auth_401", "guest_auth_fallback", OK)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].message.content.startswith("Hi there!")
    paths = [r.path for r in gw.fake.requests]
    assert paths.index("/api/v1/auths/") < paths.index("/api/v1/auths/guest")


def test_every_key_is_compared_in_constant_time(monkeypatch):
    import hmac

    from server.web import handler as web

    calls = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(web.hmac, "compare_digest", counting)
    keys = ("sk-first", "sk-second", "sk-third")
    assert web.check_api_key("sk-first", keys) is True
    assert len(calls) == 3  # no early exit on a match: timing says nothing about position
    assert web.check_api_key("sk-nope", keys) is False and len(calls) == 6
