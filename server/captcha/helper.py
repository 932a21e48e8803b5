"""``python -m server.captcha.helper``: the reference solver sidecar, a small Tornado service.

Owns ``make_app`` and ``main``. ``POST /solve`` takes the gateway's ``{"scene", "region"}`` (both
optional: empty keeps the page's own) and answers ``{"param", "expires_in"}`` from a real
Chromium (``server.captcha.browser``), or an error ``{"error": {"message"}}``: 400 a body that is
not the contract, 502 the captcha or the page failed, 503 no browser, 504 no param within
``CAPTCHA_HELPER_TIMEOUT``. ``GET /healthz`` says whether the browser runs and how many solves are
under way. It listens on ``CAPTCHA_HELPER_LISTEN`` (loopback by default: it has no key of its own,
so keep it beside the gateway). Point the gateway at it with
``CAPTCHA_URL=http://127.0.0.1:8091/solve``. Needs the ``captcha`` extra (playwright) and a
Chromium at ``CAPTCHA_HELPER_BROWSER``. It logs each solve's outcome and time, never a param.
"""

import asyncio
import signal
import sys
import time

import msgspec
from loguru import logger
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from server.captcha.browser import BrowserSolver, PageSetup, SolveFailed
from server.captcha.wire import SolveAsk, refusal
from server.logs import setup_logging
from server.settings import Settings, SettingsError, load_settings

__all__ = ["main", "make_app", "make_solver"]

_BODY_LIMIT = 64 << 10


class _Handler(RequestHandler):
    def initialize(self, solver: BrowserSolver) -> None:
        self.solver = solver

    def answer(self, status: int, body: bytes) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)


class Solve(_Handler):
    async def post(self) -> None:
        try:
            if len(self.request.body) > _BODY_LIMIT:
                raise msgspec.ValidationError(f"over {_BODY_LIMIT} bytes")
            ask = msgspec.json.decode(self.request.body or b"{}", type=SolveAsk)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            message = f'the body must be {{"scene": "...", "region": "..."}}: {exc}'
            self.answer(400, refusal(message))
            return
        started = time.monotonic()
        try:
            answer = await self.solver.solve(ask.scene, ask.region)
        except SolveFailed as exc:
            logger.warning("no captcha param ({:.1f} s): {}", time.monotonic() - started, exc)
            self.answer(exc.status, refusal(str(exc)))
            return
        logger.info("captcha param solved in {:.1f} s", time.monotonic() - started)
        self.answer(200, msgspec.json.encode(answer))


class Health(_Handler):
    def get(self) -> None:
        running = self.solver.running
        body = {"ok": running, "solving": self.solver.solving}
        self.answer(200 if running else 503, msgspec.json.encode(body))


def make_app(solver: BrowserSolver) -> Application:
    args = {"solver": solver}
    return Application([(r"/solve", Solve, args), (r"/healthz", Health, args)])


def make_solver(settings: Settings) -> BrowserSolver:
    setup = PageSetup(
        url=settings.captcha_helper_page_url,
        init=settings.captcha_helper_init,
        callback=settings.captcha_helper_callback,
        trigger=settings.captcha_helper_trigger,
        timeout=settings.captcha_helper_timeout,
        ttl=settings.captcha_helper_ttl,
    )
    return BrowserSolver(settings.captcha_helper_browser, settings.captcha_helper_pages, setup)


async def serve(settings: Settings) -> None:
    host, _, port = settings.captcha_helper_listen.rpartition(":")
    solver = make_solver(settings)
    try:
        version = await solver.start()
    except SolveFailed as exc:
        logger.error("{}", exc)
        sys.exit(1)
    server = HTTPServer(make_app(solver), max_body_size=_BODY_LIMIT)
    server.add_sockets(bind_sockets(int(port), host.strip("[]")))
    logger.info(
        "captcha helper on http://{}/solve: Chromium {} on {}",
        settings.captcha_helper_listen,
        version,
        settings.captcha_helper_page_url,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.stop()
        await solver.stop()
    logger.info("captcha helper stopped")


def main() -> None:
    try:
        # The helper serves no API key of its own: the gateway's key settings do not apply.
        settings = load_settings(skip_auth_token=True)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.debug_logging)
    try:
        import playwright  # noqa: F401
    except ImportError:
        logger.error("the captcha helper needs playwright: pip install '.[captcha]'")
        sys.exit(2)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
