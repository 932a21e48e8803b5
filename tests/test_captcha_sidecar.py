"""The third captcha source, a solver sidecar (``CAPTCHA_URL``), against a fake upstream in strict
captcha mode and a fake sidecar on loopback that counts what it is asked: with the pool empty a
completion asks it on demand (scene and region as set) and the upstream takes its param; a
failing sidecar is a 503 ``captcha_required`` that says what it did and names every source,
its URL's password masked; and three replica processes on one redis-server keep the shared pool
at ``CAPTCHA_LOW_WATER`` by asking it ahead of need, one replica at a time (the sidecar is asked
for exactly the params missing, never once per replica), so completions never wait for it."""

import asyncio
import json
import time

import openai
import pytest
from loguru import logger
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer
from tests.test_captcha import HELLO, OK, sent_params
from tests.test_pool_gateway import ADMIN, admin
from tests.test_replicas import replica


class FakeSidecar:
    """A solver sidecar on 127.0.0.1: each POST is recorded and answered with a fresh param
    that ``upstream`` will take once (``mode``: ok, refuse, hang)."""

    def __init__(self, upstream: FakeUpstream | None = None, delay: float = 0.0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.mode = "ok"
        self.asks: list[dict] = []
        self.auth: list[str | None] = []
        self.url = ""
        self._server: HTTPServer | None = None

    def start(self) -> str:
        sidecar = self

        class Solve(RequestHandler):
            async def post(self) -> None:
                sidecar.asks.append(json.loads(self.request.body))
                param = f"side-{len(sidecar.asks):03d}"  # numbered as they come
                sidecar.auth.append(self.request.headers.get("Authorization"))
                await asyncio.sleep(sidecar.delay)
                if sidecar.mode == "hang":
                    await asyncio.sleep(30)
                if sidecar.mode == "refuse":
                    self.set_status(503)
                    self.finish({"error": {"message": "the browser is still starting"}})
                    return
                assert sidecar.upstream is not None and sidecar.upstream.captcha_valid is not None
                sidecar.upstream.captcha_valid.add(param)
                self.finish({"param": param, "expires_in": 75})

        sockets = bind_sockets(0, "127.0.0.1")
        self._server = HTTPServer(Application([(r"/solve", Solve)]))
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/solve"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def strict(fake: FakeUpstream) -> None:
    fake.captcha_valid = set()


async def metrics(url: str) -> str:
    return (await AsyncHTTPClient().fetch(url + "/metrics")).body.decode()


def fetches(text: str, why: str, outcome: str = "ok") -> float:
    """The sidecar counter's value in a /metrics text (0 when absent)."""
    name = f'zai_gateway_captcha_sidecar_fetches_total{{outcome="{outcome}",why="{why}"}} '
    return sum(float(line[len(name) :]) for line in text.splitlines() if line.startswith(name))


async def test_an_empty_pool_asks_the_sidecar_on_demand_and_its_param_is_taken(gateway):
    sidecar = FakeSidecar()
    url = sidecar.start()
    gw = await gateway("home", "guest_auth", OK, zai_captcha="auto", captcha_url=url)
    sidecar.upstream = gw.fake
    strict(gw.fake)
    before = fetches(await metrics(gw.url), "demand")  # one registry per test process
    try:
        async with gw.openai() as client:
            reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
            assert reply.choices[0].finish_reason == "stop"
            stream = await client.chat.completions.create(
                model="GLM-4.5", messages=HELLO, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text
    finally:
        sidecar.stop()
    assert sidecar.asks == [{"scene": "didk33e0", "region": "sgp"}] * 2  # the defaults
    assert sent_params(gw.fake) == ["side-001", "side-002"]
    assert gw.fake.captcha_used == ["side-001", "side-002"]
    assert fetches(await metrics(gw.url), "demand") == before + 2


@pytest.mark.parametrize("mode", ["refuse", "hang", "unreachable"])
async def test_a_failing_sidecar_is_a_503_that_says_what_it_did(gateway, mode):
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    sidecar = FakeSidecar()
    sidecar.mode = mode
    url = sidecar.start()
    if mode == "unreachable":
        sidecar.stop()
    gw = await gateway(
        "home",
        "guest_auth",
        OK,
        zai_captcha="on",
        debug_logging=True,
        captcha_url=url.replace("http://", "http://solver:hunter2@"),
        captcha_timeout=1.0,
    )
    sidecar.upstream = gw.fake
    strict(gw.fake)
    started = time.monotonic()
    try:
        async with gw.openai() as client:
            with pytest.raises(openai.APIStatusError) as info:
                await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    finally:
        sidecar.stop()
        logger.remove(sink)
    err = info.value
    assert err.status_code == 503 and err.code == "captcha_required"
    assert err.response.headers["Retry-After"] == "10"
    for source in ("X-Zai-Captcha", "zai_captcha", "POST /v1/captcha", "CAPTCHA_URL"):
        assert source in err.message
    said = {
        "refuse": "answered 503: the browser is still starting",
        "hang": "gave no param within 1 s",
        "unreachable": "could not be reached",
    }[mode]
    assert "the solver sidecar at http://solver:***@127.0.0.1:" in err.message
    assert said in err.message
    assert time.monotonic() - started < 5
    assert "hunter2" not in err.message and not any("hunter2" in line for line in lines)
    if mode != "unreachable":
        assert sidecar.auth == ["Basic c29sdmVyOmh1bnRlcjI="]  # the URL's user:password
    assert sent_params(gw.fake) == [None]
    outcome = {"refuse": "refused", "hang": "timeout", "unreachable": "unreachable"}[mode]
    text = await metrics(gw.url)
    assert f'zai_gateway_captcha_sidecar_fetches_total{{outcome="{outcome}",why="demand"}}' in text


@pytest.mark.timeout(120)
async def test_three_replicas_keep_the_pool_at_low_water_asking_the_sidecar_once_per_param(
    io_loop, tmp_path
):
    redis = RedisServer().start()
    fake = FakeUpstream("home", "guest_auth_user_role", OK)
    strict(fake)
    base = await fake.start()
    sidecar = FakeSidecar(fake, delay=0.3)  # slow enough for three replicas to race
    url = sidecar.start()
    extra = {
        "ZAI_CAPTCHA": "on",
        "CAPTCHA_URL": url,
        "CAPTCHA_LOW_WATER": "3",
        "CAPTCHA_REFILL_INTERVAL": "0.1",
    }
    replicas = [replica(redis.url, base, tmp_path, **extra) for _ in range(3)]

    async def depth() -> int:
        _, status = await admin(replicas[0], "GET", "/v1/token-pool/status")
        return status["captcha"]["depth"]

    async def settle(asked: int) -> None:
        deadline = time.monotonic() + 15
        while (len(sidecar.asks) < asked or await depth() < 3) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # ten more refill rounds on every replica: none asks again

    try:
        await asyncio.gather(*(r.ready() for r in replicas))
        await settle(3)
        assert await depth() == 3 and len(sidecar.asks) == 3
        for n in range(2):
            async with replicas[n].client() as client:
                reply = await client.chat.completions.create(model="GLM-5.1", messages=HELLO)
                assert reply.choices[0].finish_reason == "stop"
        await settle(5)
        assert await depth() == 3 and len(sidecar.asks) == 5  # the two taken, replaced once
        assert sorted(fake.captcha_used) == ["side-001", "side-002"]  # from the pool, in order
        texts = [await metrics(r.url) for r in replicas]
        assert not any('why="demand"' in t for t in texts)  # no completion waited for a solve
        assert sum(fetches(t, "ahead") for t in texts) == 5
        assert not any(f"side-00{n}" in r.text() for r in replicas for n in range(1, 6))
    finally:
        for r in replicas:
            r.stop()
        sidecar.stop()
        await fake.close()
        redis.stop()


@pytest.mark.parametrize("mode", ["ok", "refuse"])
async def test_the_self_check_asks_the_sidecar_when_the_pool_is_empty(gateway, mode):
    sidecar = FakeSidecar()
    sidecar.mode = mode
    url = sidecar.start()
    gw = await gateway(
        "home", "guest_auth", OK, admin_token=ADMIN, captcha_url=url, captcha_low_water=0
    )
    sidecar.upstream = gw.fake
    strict(gw.fake)
    try:
        code, report = await admin(gw, "GET", "/v1/upstream/check?complete=1")
    finally:
        sidecar.stop()
    assert code == 200
    steps = {s["name"]: s for s in report["routes"][0]["steps"]}
    if mode == "ok":
        assert report["ok"] is True, report
        assert "the solver sidecar at http://127.0.0.1:" in steps["captcha"]["detail"]
        assert gw.fake.captcha_used == ["side-001"]  # put in the pool, taken by the completion
        assert len(sidecar.asks) == 1
    else:
        assert steps["captcha"]["ok"] is False
        assert "answered 503: the browser is still starting" in steps["captcha"]["detail"]
        assert "CAPTCHA_URL" in steps["captcha"]["detail"]
