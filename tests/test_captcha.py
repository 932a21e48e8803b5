"""The captcha gate (PROTOCOL.md section 6.2) through the openai SDK, against a fake upstream
in strict captcha mode: no param is a 503 ``captcha_required`` that names the sources and
leaves the token alone; the caller's header or body param is used once and never logged; the
shared pool's params are each used once, across three replica processes on a real
redis-server; a stale param is retried once with another from the pool."""

import asyncio
import json

import anthropic
import openai
import pytest
from loguru import logger
from tornado.httpclient import AsyncHTTPClient

from tests.accounts import ADMIN, TOKENS, admin, pool_gateway
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream
from tests.processes import GatewayProcess
from tests.redis_server import RedisServer
from tests.test_replicas import replica

OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]
CAPTCHA = "Q2FwdGNoYVYzLXNlY3JldC1wYXJhbS0wMDAx"  # what an Aliyun attestation looks like


def strict(gw, *params: str) -> None:
    gw.fake.captcha_valid = set(params)


def sent_params(fake: FakeUpstream) -> list:
    return [
        json.loads(r.body).get("captcha_verify_param")
        for r in fake.requests
        if r.path.endswith("/chat/completions")
    ]


async def test_no_param_is_503_captcha_required_and_the_token_is_kept(gateway):
    gw = await pool_gateway(
        gateway,
        tokens=TOKENS[:1],
        zai_captcha="auto",
    )
    strict(gw, CAPTCHA)
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    err = info.value
    assert err.status_code == 503 and err.code == "captcha_required"
    assert int(err.response.headers["Retry-After"]) == 10
    for source in ("X-Zai-Captcha", "zai_captcha", "POST /v1/captcha"):
        assert source in err.message
    assert sent_params(gw.fake) == [None]  # asked /api/config, found no param, sent none
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert status["summary"]["active"] == 1 and status["tokens"][0]["failures"] == 0


async def test_caller_header_and_body_params_are_used_once_and_never_logged(gateway):
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        gw = await gateway("home", "guest_auth", OK, debug_logging=True, zai_captcha="auto")
        strict(gw, CAPTCHA, CAPTCHA + "2")
        async with gw.openai() as client:
            reply = await client.chat.completions.create(
                model="GLM-4.5", messages=HELLO, extra_headers={"X-Zai-Captcha": CAPTCHA}
            )
            assert reply.choices[0].message.content
            with pytest.raises(openai.APIStatusError) as info:  # the same param again: F018
                await client.chat.completions.create(
                    model="GLM-4.5", messages=HELLO, extra_headers={"X-Zai-Captcha": CAPTCHA}
                )
            assert info.value.code == "captcha_required" and "F018" in info.value.message
            reply = await client.chat.completions.create(
                model="GLM-4.5", messages=HELLO, extra_body={"zai_captcha": CAPTCHA + "2"}
            )
            assert reply.choices[0].finish_reason == "stop"
    finally:
        logger.remove(sink)
    assert sent_params(gw.fake) == [CAPTCHA, CAPTCHA, CAPTCHA + "2"]
    assert not any(CAPTCHA in line for line in lines)


async def test_pool_params_are_popped_once_and_a_stale_one_is_retried(gateway):
    gw = await gateway("home", "guest_auth", OK, admin_token=ADMIN, zai_captcha="on")
    strict(gw, "p1", "p2", "p3")
    gw.fake.captcha_used.append("stale")
    code, body = await admin(gw, "POST", "/v1/captcha", {"params": ["p1", "p2"], "ttl": 75})
    assert code == 200 and body == {"added": 2, "captcha": {"depth": 2}}
    code, body = await admin(gw, "POST", "/v1/captcha", {"params": ["old"], "ttl": 0.05})
    await asyncio.sleep(0.1)  # "old" expires in the pool and must never be sent
    code, body = await admin(gw, "POST", "/v1/captcha", {"params": ["stale"], "ttl": 5})
    assert body["captcha"]["depth"] == 3  # "old" is gone; "stale" is popped first
    code, body = await admin(gw, "POST", "/v1/captcha", {"params": ["p3"], "ttl": 75})
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert status["captcha"] == {"depth": 4}
    async with gw.openai() as client:
        for _ in range(2):  # the first gets "stale" (F018) and is retried with p1 or p2
            reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
            assert reply.choices[0].finish_reason == "stop"
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        with pytest.raises(openai.APIStatusError) as info:  # pool empty
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.code == "captcha_required"
    assert sent_params(gw.fake)[0] == "stale" and "old" not in sent_params(gw.fake)
    assert sorted(gw.fake.captcha_used) == ["p1", "p2", "p3", "stale"]


async def test_admin_captcha_push_is_validated(gateway):
    gw = await gateway("home", "guest_auth", OK, admin_token=ADMIN)
    assert (await admin(gw, "POST", "/v1/captcha", {"params": ["x"]}, token=None))[0] == 401
    code, body = await admin(gw, "POST", "/v1/captcha", {"params": "x"})
    assert code == 400 and "params" in json.dumps(body)
    code, body = await admin(gw, "POST", "/v1/captcha", {"params": ["x"], "ttl": 9999})
    assert code == 400 and body["error"]["param"] == "ttl"


@pytest.mark.timeout(120)
async def test_three_replicas_never_use_a_pool_param_twice(io_loop, tmp_path):
    redis = RedisServer().start()
    fake = FakeUpstream("home", "guest_auth_user_role", OK)
    params = [f"param-{n:03d}" for n in range(12)]
    fake.captcha_valid = set(params)
    base = await fake.start()
    replicas = [replica(redis.url, base, tmp_path) for _ in range(3)]
    try:
        await asyncio.gather(*(r.ready() for r in replicas))
        code, body = await admin(replicas[0], "POST", "/v1/captcha", {"params": params})
        assert code == 200 and body["captcha"]["depth"] == 12

        async def ask(replica: GatewayProcess) -> str:
            async with replica.client() as client:
                try:
                    await client.chat.completions.create(model="GLM-5.1", messages=HELLO)
                except openai.APIStatusError as exc:
                    return str(exc.code)
            return "ok"

        results = await asyncio.gather(*(ask(replicas[n % 3]) for n in range(15)))
        assert sorted(results) == ["captcha_required"] * 3 + ["ok"] * 12
        assert sorted(fake.captcha_used) == params  # each once, none reused (no F018)
        reply = await AsyncHTTPClient().fetch(replicas[1].url + "/metrics")
        metrics = reply.body.decode()
        assert "zai_gateway_captcha_pool_depth 0.0" in metrics
        assert not any(p in r.text() for r in replicas for p in params)
    finally:
        for r in replicas:
            r.stop()
        await fake.close()
        redis.stop()


async def test_the_anthropic_face_takes_the_callers_param_as_body_field_or_header(gateway):
    gw = await gateway("home", "guest_auth", OK, zai_captcha="auto")
    strict(gw, CAPTCHA, CAPTCHA + "2")
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20)
    async with client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(model="GLM-4.5", max_tokens=64, messages=HELLO)
        assert info.value.status_code == 503
        assert "POST /v1/captcha" in info.value.message and "zai_captcha" in info.value.message
        reply = await client.messages.create(
            model="GLM-4.5", max_tokens=64, messages=HELLO, extra_body={"zai_captcha": CAPTCHA}
        )
        assert reply.content[-1].text
        reply = await client.messages.create(
            model="GLM-4.5",
            max_tokens=64,
            messages=HELLO,
            extra_headers={"X-Zai-Captcha": CAPTCHA + "2"},
        )
        assert reply.stop_reason == "end_turn"
    assert sent_params(gw.fake) == [None, CAPTCHA, CAPTCHA + "2"]


async def test_the_responses_face_takes_the_callers_param_as_body_field_or_header(gateway):
    gw = await gateway("home", "guest_auth", OK, zai_captcha="auto")
    strict(gw, CAPTCHA, CAPTCHA + "2")
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.responses.create(model="GLM-4.5", input="hello")
        assert info.value.status_code == 503 and info.value.code == "captcha_required"
        assert "POST /v1/captcha" in info.value.message and "zai_captcha" in info.value.message
        reply = await client.responses.create(
            model="GLM-4.5", input="hello", extra_body={"zai_captcha": CAPTCHA}
        )
        assert reply.status == "completed" and reply.output_text
        stream = await client.responses.create(
            model="GLM-4.5",
            input="hello",
            stream=True,
            extra_headers={"X-Zai-Captcha": CAPTCHA + "2"},
        )
        kinds = [event.type async for event in stream]
        assert kinds[-1] == "response.completed"
    assert sent_params(gw.fake) == [None, CAPTCHA, CAPTCHA + "2"]
