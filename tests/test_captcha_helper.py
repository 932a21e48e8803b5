"""The reference solver sidecar, ``python -m server.captcha.helper``, as a real process driving
Debian's Chromium through Playwright, against a LOCAL page that mimics the Aliyun Captcha V3
integration (no real site is reachable here): the page loads a shim ``AliyunCaptcha.js`` that
defines ``window.initAliyunCaptcha`` as the SDK does, calls it with its own scene, region, button
and ``success``/``fail`` callbacks, and the shim calls ``success`` with a param 300 ms after the
button is clicked (or ``fail``, or nothing, as the test says). The helper must answer the
sidecar contract with that param, the gateway's scene and region applied, the page's own
callback never reached (a param is single-use); a failing or silent captcha is a plain 502 or
504 in time. Then the whole chain: the openai SDK -> gateway (``CAPTCHA_URL``) -> helper ->
Chromium -> page -> the param the fake upstream (strict captcha mode) takes."""

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tests.processes import ROOT, gateway_env
from tests.redis_server import free_port
from tests.test_browser import CHROMIUM, chromium_or_skip
from tests.test_captcha import HELLO, OK, sent_params

SHIM = """
window.initAliyunCaptcha = function (config) {
  document.querySelector(config.button).addEventListener("click", () => {
    setTimeout(() => {
      if (MIMIC.mode === "fail") config.fail({code: "F001", msg: "risk too high"});
      else if (MIMIC.mode === "ok")
        config.success([MIMIC.nonce, config.SceneId, config.region].join("."));
    }, 300);  // "never": the captcha spins for ever
  });
  if (config.getInstance) config.getInstance({});
};
"""

PAGE = """<!doctype html><title>chat</title>
<script>window.MIMIC = {mimic};</script>
<script src="/AliyunCaptcha.js"></script>
<div id="captcha-element"></div><button id="captcha-button">Send</button>
<script>
  window.initAliyunCaptcha({{
    SceneId: "page-own-scene", prefix: "p", mode: "popup", region: "cn",
    element: "#captcha-element", button: "#captcha-button",
    success: (param) => fetch("/spent", {{method: "POST", body: String(param)}}),
    fail: () => fetch("/spent", {{method: "POST", body: "fail"}}),
  }});
</script>"""


class Mimic:
    """The local captcha page: each load gets a fresh nonce (recorded in ``issued``); what the
    page's own callbacks got lands in ``spent``."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.issued: list[str] = []
        self.spent: list[str] = []
        self.valid: set[str] | None = None  # the fake upstream's, to accept what is issued
        self.url = ""
        self.log: Path | None = None  # the helper's log file, once it runs
        self._server: HTTPServer | None = None

    def start(self) -> str:
        mimic = self

        class Page(RequestHandler):
            def get(self) -> None:
                nonce = f"mimic-{len(mimic.issued) + 1:03d}"
                mimic.issued.append(nonce)
                if mimic.valid is not None:
                    mimic.valid.add(f"{nonce}.didk33e0.sgp")
                self.finish(PAGE.format(mimic=json.dumps({"mode": mimic.mode, "nonce": nonce})))

        class Shim(RequestHandler):
            def get(self) -> None:
                self.set_header("Content-Type", "application/javascript")
                self.finish(SHIM)

        class Spent(RequestHandler):
            def post(self) -> None:
                mimic.spent.append(self.request.body.decode())

        sockets = bind_sockets(0, "127.0.0.1")
        routes = [(r"/", Page), (r"/AliyunCaptcha.js", Shim), (r"/spent", Spent)]
        self._server = HTTPServer(Application(routes))
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


@contextlib.asynccontextmanager
async def helper_on_mimic(tmp_path) -> AsyncIterator[tuple[str, Mimic]]:
    """The local page and ``python -m server.captcha.helper`` on it (a free loopback port),
    once its browser runs; yields the helper's base URL and the page. The helper must exit 0
    on SIGTERM."""
    chromium_or_skip()
    mimic = Mimic()
    port = free_port()
    env = gateway_env(
        CAPTCHA_HELPER_LISTEN=f"127.0.0.1:{port}",
        CAPTCHA_HELPER_PAGE_URL=mimic.start(),
        CAPTCHA_HELPER_BROWSER=CHROMIUM,
        CAPTCHA_HELPER_TIMEOUT="4",
    )
    base, log_path = f"http://127.0.0.1:{port}", tmp_path / "helper.log"
    mimic.log = log_path
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.captcha.helper"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            await ready(base, log_path)
            yield base, mimic
        finally:
            proc.terminate()
            mimic.stop()
            assert proc.wait(20) == 0, log_path.read_text()


async def ready(base: str, log_path) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reply = await AsyncHTTPClient().fetch(base + "/healthz", raise_error=False)
            if reply.code == 200:
                assert json.loads(reply.body) == {"ok": True, "solving": 0}
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the helper never became ready: {log_path.read_text()}")


async def solve(base: str, body: object) -> tuple[int, dict]:
    reply = await AsyncHTTPClient().fetch(
        base + "/solve",
        method="POST",
        body=json.dumps(body) if not isinstance(body, bytes) else body,
        raise_error=False,
        request_timeout=30,
    )
    return reply.code, json.loads(reply.body)


@pytest.mark.timeout(120)
async def test_the_helper_answers_the_param_the_page_callback_gets(io_loop, tmp_path):
    async with helper_on_mimic(tmp_path) as (base, mimic):
        ask = {"scene": "didk33e0", "region": "sgp"}
        first, second = await asyncio.gather(solve(base, ask), solve(base, ask))
        assert first[0] == second[0] == 200
        params = sorted([first[1]["param"], second[1]["param"]])
        # Each from its own page load, with the gateway's scene and region put in the
        # config the page passed (it said page-own-scene / cn).
        assert params == [f"{n}.didk33e0.sgp" for n in sorted(mimic.issued)]
        assert first[1]["expires_in"] == 75
        code, body = await solve(base, {})  # nothing asked: the page's own config stands
        assert code == 200 and body["param"] == f"{mimic.issued[-1]}.page-own-scene.cn"
        assert mimic.spent == []  # the page never saw a param it could spend

        mimic.mode = "fail"
        code, body = await solve(base, ask)
        assert code == 502
        assert "the captcha failed on the page" in body["error"]["message"]
        assert "risk too high" in body["error"]["message"]

        mimic.mode = "never"
        started = time.monotonic()
        code, body = await solve(base, ask)
        assert code == 504 and time.monotonic() - started < 8
        message = body["error"]["message"]
        assert "no captcha param within 4 s" in message and "success callback" in message

        code, body = await solve(base, b'{"scene": 5}')
        assert code == 400 and "scene" in body["error"]["message"]
        assert mimic.spent == []
    log = mimic.log.read_text()
    assert "captcha param solved" in log
    assert not any(nonce in log for nonce in mimic.issued)  # never a param in its log


@pytest.mark.timeout(120)
async def test_a_completion_gets_its_param_from_the_helper_through_chromium(gateway, tmp_path):
    async with helper_on_mimic(tmp_path) as (base, mimic):
        gw = await gateway(
            "home",
            "guest_auth",
            OK,
            zai_captcha="auto",
            captcha_url=base + "/solve",
            captcha_low_water=0,  # on demand: the request itself waits for Chromium
        )
        gw.fake.captcha_valid = set()
        mimic.valid = gw.fake.captcha_valid
        async with gw.openai() as client:
            reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        assert reply.choices[0].finish_reason == "stop"
    assert sent_params(gw.fake) == ["mimic-001.didk33e0.sgp"]
    assert gw.fake.captcha_used == ["mimic-001.didk33e0.sgp"] and mimic.spent == []
