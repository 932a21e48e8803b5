"""A real Chromium, driven through Playwright, as the reference captcha solver.

Owns ``BrowserSolver`` and ``SolveFailed``. It launches the system browser
(``CAPTCHA_HELPER_BROWSER``, never a download) once, headless, and for each solve opens a fresh
page (one shared context: cookies kept, as for a returning visitor) with an init script that runs
before any script of the page and hooks the page's captcha init function (``CAPTCHA_HELPER_INIT``,
Aliyun Captcha V3's ``initAliyunCaptcha``): the config the page hands it gets the asked scene and
region, its success callback (``CAPTCHA_HELPER_CALLBACK``) is replaced so that the param comes
here and never reaches the page (a param is single-use: the page would spend it on a request of
its own), and its ``fail`` callback reports the failure. Once the page has made the call, the
solver clicks the trigger (``CAPTCHA_HELPER_TRIGGER``, else the ``button`` the page gave) and
waits for the callback; the whole solve has ``CAPTCHA_HELPER_TIMEOUT``, and at most
``CAPTCHA_HELPER_PAGES`` run at once. Needs the ``captcha`` extra (playwright).
"""

import asyncio
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.captcha.wire import SolveAnswer
from server.core.errors import shown

if TYPE_CHECKING:  # the optional "captcha" extra: imported when a browser starts
    from playwright.async_api import Browser, BrowserContext, Playwright

__all__ = ["CHROMIUM_ARGS", "BrowserSolver", "PageSetup", "SolveFailed"]

# Headless and quiet: no GPU, no sandbox (containers), no background calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# opts: {binding, name, callback, scene, region}. Each report is (kind, value): "ready" with the
# page's button selector, "ok" with the param, "fail" with the captcha's own words.
_HOOK = r"""
(opts) => {
  const report = (kind, value) => window[opts.binding](kind, value);
  const wrap = (init) => {
    const hooked = function (config, ...rest) {
      const cfg = Object.assign({}, config || {});
      if (opts.scene) cfg.SceneId = opts.scene;
      if (opts.region) cfg.region = opts.region;
      cfg[opts.callback] = (param) => {
        report("ok", param == null ? "" : String(param));
        return {captchaResult: true, bizResult: true};
      };
      cfg.fail = (result) => {
        report("fail", typeof result === "string" ? result : JSON.stringify(result));
      };
      const made = init.call(this, cfg, ...rest);
      report("ready", typeof cfg.button === "string" ? cfg.button : "");
      return made;
    };
    hooked.zaiHooked = true;
    return hooked;
  };
  let current;
  Object.defineProperty(window, opts.name, {
    configurable: true,
    get: () => current,
    set: (value) => {
      current = typeof value === "function" && !value.zaiHooked ? wrap(value) : value;
    },
  });
}
"""


class SolveFailed(Exception):
    """No param: ``status`` is what the helper answers (502 the captcha failed, 504 too slow,
    503 no browser); the text is plain words, never a param."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class PageSetup:
    url: str
    init: str = "initAliyunCaptcha"
    callback: str = "success"
    trigger: str = ""
    timeout: float = 25.0
    ttl: float = 75.0


class BrowserSolver:
    """One headless Chromium solving captchas on ``setup.url``: ``await solver.solve(scene,
    region)`` is a ``SolveAnswer`` or a ``SolveFailed``."""

    def __init__(self, executable: str, pages: int, setup: PageSetup) -> None:
        self.executable = executable
        self.setup = setup
        self.solving = 0
        self._slots = asyncio.Semaphore(pages)
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None

    def __repr__(self) -> str:
        return f"<BrowserSolver {self.setup.url} solving={self.solving}>"

    async def start(self) -> str:
        """Launch the browser; returns its version."""
        from playwright.async_api import Error as BrowserError  # the optional "captcha" extra
        from playwright.async_api import async_playwright

        playwright = self._playwright = await async_playwright().start()
        try:
            browser = self._browser = await playwright.chromium.launch(
                executable_path=self.executable, headless=True, args=CHROMIUM_ARGS
            )
        except BrowserError as exc:
            await self.stop()
            reason = f"cannot start Chromium at {self.executable}: {_first(exc)}"
            raise SolveFailed(503, reason) from None
        self._context = await browser.new_context()
        return browser.version

    @property
    def running(self) -> bool:
        return self._browser is not None and self._browser.is_connected()

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()
        self._browser = self._context = self._playwright = None

    async def solve(self, scene: str, region: str) -> SolveAnswer:
        context = self._context
        if context is None:
            raise SolveFailed(503, "the browser is not running")
        from playwright.async_api import Error as BrowserError

        stage = ["waiting for a free page"]
        try:
            async with asyncio.timeout(self.setup.timeout):
                async with self._slots:
                    self.solving += 1
                    try:
                        return await self._solve(context, scene, region, stage)
                    finally:
                        self.solving -= 1
        except TimeoutError:
            raise SolveFailed(
                504, f"no captcha param within {self.setup.timeout:g} s ({stage[0]})"
            ) from None
        except BrowserError as exc:  # the page did not load, the trigger is not there, ...
            raise SolveFailed(502, f"the browser failed {stage[0]}: {_first(exc)}") from None

    async def _solve(
        self, context: "BrowserContext", scene: str, region: str, stage: list[str]
    ) -> SolveAnswer:
        setup = self.setup
        reports: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        binding = f"__zaiCaptcha{secrets.token_hex(4)}"
        page = await context.new_page()
        try:
            await page.expose_function(binding, lambda kind, got: reports.put_nowait((kind, got)))
            opts = {
                "binding": binding,
                "name": setup.init,
                "callback": setup.callback,
                "scene": scene,
                "region": region,
            }
            await page.add_init_script(f"({_HOOK})({json.dumps(opts)})")
            stage[0] = f"loading {setup.url}"
            await page.goto(setup.url, wait_until="commit")
            stage[0] = f"waiting for the page to call {setup.init}"
            while True:
                kind, value = await reports.get()
                if kind == "ready":
                    selector = setup.trigger or value
                    stage[0] = f"waiting for the captcha's {setup.callback} callback"
                    if selector:
                        await page.click(selector)
                elif kind == "ok" and value:
                    return SolveAnswer(value, setup.ttl)
                else:
                    raise SolveFailed(502, f"the captcha failed on the page: {shown(value, 300)}")
        finally:
            await page.close()


def _first(exc: Exception) -> str:
    """Playwright's message without its call log: its first line, made safe to show."""
    text = str(exc).strip()
    return shown(text.splitlines()[0] if text else type(exc).__name__, 300)
