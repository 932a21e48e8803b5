"""What every API route shares: keys, errors, limits, and the one log line per request.

Owns ``ApiHandler`` and ``api`` (a decorator that turns a ``GatewayError`` raised anywhere in
a route into the error body of the API that route speaks, after checking the key of a keyed
route), ``check_api_key`` (constant-time, ``Authorization: Bearer`` or ``x-api-key``),
``NotFound``, the ``REQUEST_TIMEOUT`` deadline of a completion (until its answer begins), and
the access line: request id,
method, path, model, status, latency and time to first byte, upstream attempts. The client's
path and model name are ``shown`` (control characters escaped, cut at 100 characters); a
request the client abandoned before its answer began is logged with status 499.

Keys: ``AUTH_TOKEN(S)`` are checked in memory (unlimited); an issued key (``sk-zai-...``)
is checked in Redis by one Lua call (``state.client_keys``: secret hash, disabled, expiry,
models, limits). A route that runs a completion (``admits = True``) makes that one call when
the conversation is known, so its limits are checked and its estimate reserved in the same
round trip; other routes make it before the route runs. Nothing about a key is cached, so a
disabled key is refused on its very next request. After the completion the reservation is
settled with the real usage (one more call, after the answer, for keys with token limits),
and every answered request is counted per key (``state.usage``, flushed in the background).
"""

import asyncio
import contextlib
import functools
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger
from redis.exceptions import RedisError
from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from server.core.admission import refusal
from server.core.chat import Conversation, Sink
from server.core.completion import Attempts, complete
from server.core.continuation import conversation_key
from server.core.errors import GatewayError, client_should_retry, shown
from server.core.images import check_images
from server.core.models import STATIC, Model, ModelTable
from server.core.token_estimate import estimate_conversation
from server.credentials.sources import PooledTokens
from server.ids import hex_id
from server.ops.metrics import observe_key, observe_request
from server.ops.tracing import end_request_span, request_attrs, request_span, within
from server.web.callers import ANONYMOUS, Caller, Metered, rate_headers
from server.web.errors import error_body
from state.client_keys import Admission, KeyCheck, parse_secret
from state.files import FileCache

if TYPE_CHECKING:
    from server.services import Services

__all__ = [
    "CLIENT_CLOSED",
    "ApiHandler",
    "NotFound",
    "api",
    "check_api_key",
    "set_cors_headers",
    "write_json_error",
]

CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
# What a page may read of an answer beyond the safe few: the request id and the retry advice.
CORS_EXPOSE = (
    "X-Request-Id, Retry-After, x-should-retry, X-Gateway-Tools, "
    "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)
CLIENT_CLOSED = 499  # the access status of a request abandoned before its answer began


def check_api_key(presented: str, keys: tuple[str, ...]) -> bool:
    """True when ``presented`` is one of ``keys``; every key is compared, in constant time."""
    return match_api_key(presented, keys) >= 0


def match_api_key(presented: str, keys: tuple[str, ...]) -> int:
    """Which of ``keys`` is ``presented`` (-1: none); every key is compared, in constant time."""
    given = presented.encode()
    found = -1
    for i, key in enumerate(keys):
        if hmac.compare_digest(given, key.encode()):
            found = i
    return found


def set_cors_headers(handler: RequestHandler) -> None:
    """Allow the request's ``Origin`` when ``CORS_ORIGINS`` lists it (or is ``*``)."""
    origins = handler.services.settings.cors_origins  # type: ignore[attr-defined]
    origin = handler.request.headers.get("Origin")
    if not origins or not origin:
        return
    if "*" in origins:
        handler.set_header("Access-Control-Allow-Origin", "*")
    elif origin in origins:
        handler.set_header("Access-Control-Allow-Origin", origin)
        handler.set_header("Vary", "Origin")
    else:
        return
    handler.set_header("Access-Control-Expose-Headers", CORS_EXPOSE)


def api(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(method)
    async def route(self: "ApiHandler", *args: str) -> None:
        try:
            self.take_body()
            if self.keyed:
                self.authenticate()
                if not self.admits:
                    await self.admit(None)
            await method(self, *args)
        except GatewayError as err:
            self.send_gateway_error(err)

    return route


@stream_request_body
class ApiHandler(RequestHandler):
    """Base of every API route. Subclasses set ``render_error`` for their API's error shape."""

    render_error: Callable[[GatewayError], bytes] = staticmethod(error_body)
    route = "other"  # the label requests of this route are counted under
    keyed = True  # the route wants a key: checked before a 100-continue body is sent
    admits = False  # the route runs a completion: an issued key is checked with its limits

    def initialize(self, services: "Services") -> None:
        self.services = services
        self.request_id = hex_id(12)
        self.model_name = "-"
        self.attempts: Any = None
        self.first_byte: float | None = None
        self.started_at = time.monotonic()
        self._task: asyncio.Future[None] | None = None
        self._aborted: GatewayError | None = None
        self._left_unanswered = False
        self._body: list[bytes] = []
        self._body_size = 0
        self.caller: Caller | None = None
        self._issued: tuple[str, str] | None = None  # an issued key's (id, secret hash)
        self._charged = False  # its request was counted against its limits
        self._check: KeyCheck | None = None  # its check, sent with the token pick
        self._rate_headers: dict[str, str] = {}
        self.metered: Metered | None = None
        self.span: Any = None  # the request's trace span, while tracing is on
        self.set_default_headers()

    def set_default_headers(self) -> None:
        # Also runs on every clear() (error answers), so CORS headers survive into errors;
        # the first call, from tornado's __init__, comes before initialize gave us settings.
        if hasattr(self, "services"):
            set_cors_headers(self)
            for name, value in self._rate_headers.items():
                self.set_header(name, value)

    async def options(self, *args: str) -> None:
        """A browser's CORS preflight: 204 with the allow headers when the origin may call."""
        if not self.services.settings.cors_origins:
            raise HTTPError(405)
        if self._headers.get("Access-Control-Allow-Origin"):
            asked = self.request.headers.get("Access-Control-Request-Headers", "")
            self.set_header("Access-Control-Allow-Methods", CORS_METHODS)
            # Every header asked for: the SDKs send anthropic-*, x-stainless-*, openai-* ones
            # that change with each release; the key is checked on the real request anyway.
            if asked:
                self.set_header("Access-Control-Allow-Headers", asked)
            self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)
        self.finish()

    async def prepare(self) -> None:
        """Runs once the headers are in, before any of the body is read (the body is streamed
        in ``data_received``): a body announced too large is a JSON 413 at once, and a client
        that asks ``Expect: 100-continue`` hears about a bad key before it sends the body."""
        self.set_header("X-Request-Id", self.request_id)
        length = self.request.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) > self.services.settings.max_body_bytes:
            raise self.too_large()
        if self.keyed and self.request.headers.get("Expect", "").lower() == "100-continue":
            self.authenticate()
            await self.admit(None)

    def too_large(self) -> GatewayError:
        limit = self.services.settings.max_body_bytes
        return GatewayError("payload_too_large", f"the request body is larger than {limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size <= self.services.settings.max_body_bytes:
            self._body.append(chunk)

    def take_body(self) -> None:
        """The streamed body, whole, as ``request.body`` (a chunked one may still be too big)."""
        if self._body_size > self.services.settings.max_body_bytes:
            raise self.too_large()
        self.request.body = b"".join(self._body)
        self._body = []

    def presented_key(self) -> str:
        """The key the client sent: ``Authorization: Bearer <key>``, else ``x-api-key``."""
        header = self.request.headers.get("Authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
        return presented or self.request.headers.get("x-api-key", "")

    def authenticate(self) -> None:
        """Who calls: a configured key, or an issued one (checked in Redis by ``admit``)."""
        if self.caller is not None or self._issued is not None:
            return
        settings = self.services.settings
        if settings.skip_auth_token:
            self.caller = ANONYMOUS
            return
        presented = self.presented_key()
        if not presented:
            raise GatewayError(
                "invalid_api_key",
                "no API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key')",
            )
        found = match_api_key(presented, settings.api_keys)
        if found >= 0:
            self.caller = self.services.static_callers[found]
            return
        self._issued = parse_secret(presented)
        if self._issued is None:
            raise GatewayError("invalid_api_key", "the API key is not valid for this gateway")

    async def admit(self, conv: Conversation | None) -> None:
        """An issued key's one Redis call: check it and, with a conversation, count the
        request and reserve its token estimate. Raises the refusal; sets the headers."""
        if (
            self._issued is None
            or (self._charged and conv is not None)
            or (self.caller is not None and conv is None)
        ):
            return
        kid, digest = self._issued
        model = conv.model.id if conv is not None else ""
        estimate = estimate_conversation(conv) + (conv.max_tokens or 0) if conv else 0
        try:
            admission = await self.services.client_keys.admit(
                kid, digest, model, int(conv is not None), estimate, self.request_id
            )
        except (RedisError, OSError) as exc:
            raise GatewayError("state_unavailable", f"checking the API key: {exc}") from None
        self._admitted(admission, charged=conv is not None)
        err = refusal(admission, model)
        if err is not None:
            raise err

    def key_check(self, conv: Conversation) -> KeyCheck | None:
        """An issued key's check of this completion, to run with the pool's token pick in
        one round trip (``PooledTokens``); None where it runs alone first (``admit``): no
        issued key, no pool, or images (they are read before any pick)."""
        services = self.services
        if self._issued is None or self._charged or conv.images:
            return None
        if not isinstance(services.tokens, PooledTokens):
            return None
        kid, digest = self._issued
        estimate = estimate_conversation(conv) + (conv.max_tokens or 0)
        self._check = services.client_keys.check(
            kid, digest, conv.model.id, 1, estimate, self.request_id
        )
        return self._check

    def _admitted(self, admission: Admission, charged: bool) -> None:
        """What an issued key's check said: who calls, and the rate headers of every answer."""
        if self._issued is None:
            return
        self._charged = charged
        if admission.refused != "unknown":
            self.caller = Caller(self._issued[0], admission.name, admission)
        self._rate_headers = rate_headers(admission)
        for name, value in self._rate_headers.items():
            self.set_header(name, value)

    def _take_check(self) -> None:
        """The check that ran with the token pick, once it has answered: taken before the
        first byte, an error answer, the settling and the usage count, whichever is first."""
        check = self._check
        if check is not None and check.admission is not None:
            self._check = None
            self._admitted(check.admission, charged=True)

    def tool_support(self, asked: bool) -> bool:
        """Whether tools are emulated; when the client sent some in vain, say so."""
        supported = self.services.settings.tool_support
        if asked and not supported:
            self.set_header("X-Gateway-Tools", "ignored (TOOL_SUPPORT=false)")
            logger.info("{} tools ignored: TOOL_SUPPORT=false", self.request_id)
        return supported

    async def find_model(self, name: str, claude: dict[str, str] | None = None) -> Model:
        """The row for ``name`` in the live catalogue (a 404 listing the models if none)."""
        catalogue = self.services.catalogue
        if catalogue is None:
            return STATIC.require(name, claude)
        return await catalogue.require(name, claude)

    async def model_table(self) -> ModelTable:
        """What ``/v1/models`` lists now."""
        catalogue = self.services.catalogue
        return STATIC if catalogue is None else await catalogue.listing()

    async def complete(self, conv: Conversation, sink: Sink) -> None:
        """Run one completion into ``sink`` until it ends or the client leaves."""
        services = self.services
        self.authenticate()
        if conv.images:  # refused before a key is charged or anything is read or sent
            settings, table = services.settings, await self.model_table()
            if not conv.model.vision and settings.vision_model:
                logger.info(
                    "{} {} has no vision: images served by VISION_MODEL {}",
                    self.request_id,
                    conv.model.id,
                    settings.vision_model,
                )
                conv.model = table.require(settings.vision_model)
            user_tokens = isinstance(services.tokens, PooledTokens)
            check_images(conv, table, settings.image_max_count, user_tokens)
        check = self.key_check(conv)
        if check is None:
            await self.admit(conv)
        self.attempts = Attempts()
        conv.captcha = self.request.headers.get("X-Zai-Captcha", "").strip() or conv.captcha
        named = self.request.headers.get("X-Zai-Conversation", "").strip() or conv.thread
        conv.thread = ""
        if services.continuations is not None and named:
            caller = self.caller.id if self.caller is not None else ""
            if self._issued is not None:  # its check may not have run yet: the id is known
                caller = self._issued[0]
            conv.thread = conversation_key(caller, named)  # never the raw name
        self.metered = sink = Metered(sink, conv)
        attrs = request_attrs(conv, self.route)
        self.span = request_span(
            "chat", conv.model.id, self.request.headers, attrs, self.started_at
        )
        work = complete(
            conv,
            sink,
            services.tokens,
            services.client,
            services.settings,
            self.attempts,
            services.captchas,
            services.egress,
            services.catalogue,
            services.chats,
            _files(services) if conv.images else None,
            services.continuations,
            check,
        )
        if self.span is not None:
            work = within(self.span, work)
        deadline = asyncio.get_running_loop().call_later(
            services.settings.request_timeout, self._deadline_passed, sink
        )
        try:
            await self.run_until_done_or_gone(work, sink)
        finally:
            deadline.cancel()
            await self.settle()

    def _deadline_passed(self, sink: Sink) -> None:
        # A stream that has begun runs on: the client sees progress, and UPSTREAM_IDLE_TIMEOUT
        # bounds each silence. Until then (a whole non-streamed answer) the client waits blind.
        if sink.started:
            return
        limit = self.services.settings.request_timeout
        self.abort(
            GatewayError(
                "timeout",
                f"no answer within REQUEST_TIMEOUT ({limit:g} s) after {self.attempts.tally()}",
            )
        )

    async def settle(self) -> None:
        """Give an issued key back what its reservation held beyond the real usage."""
        self._take_check()
        caller, metered = self.caller, self.metered
        if caller is None or caller.admission is None or metered is None:
            return
        try:
            await self.services.client_keys.settle(caller.id, caller.admission, metered.used)
        except (RedisError, OSError) as exc:
            logger.warning("{} settling key {} failed: {}", self.request_id, caller.id, exc)

    async def run_until_done_or_gone(self, work: Awaitable[None], sink: Any) -> None:
        """Run the completion; if the client hangs up, cancel it (closing the upstream).
        If the instance stops before it ends, ``abort`` cancels it and the sink says why."""
        self._task = asyncio.ensure_future(work)
        active = self.services.active
        active.add(self)
        try:
            await self._task
        except (asyncio.CancelledError, StreamClosedError):
            if self._aborted is None:
                logger.info("{} client went away; upstream closed", self.request_id)
                return
            with contextlib.suppress(StreamClosedError):
                await sink.fail(self._aborted)
        finally:
            active.discard(self)
            close = getattr(sink, "close", None)
            if close is not None:
                close()

    def abort(self, err: GatewayError) -> None:
        """End this request now with ``err`` (the drain deadline passed)."""
        if self._task is not None and not self._task.done():
            self._aborted = err
            self._task.cancel()

    def on_connection_close(self) -> None:
        # The client left before a status line reached it: not a 200 (nginx's 499).
        self._left_unanswered = not self._headers_written
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def flush(self, include_footers: bool = False) -> "asyncio.Future[None]":
        """Send what was written. The future is worth waiting for only while the client is
        behind (bytes still queued after the send): that is the backpressure. Otherwise the
        caller goes on at once, without two loop turns per streamed event."""
        if self.first_byte is None:
            self.first_byte = time.monotonic()
            self._take_check()
        sent = super().flush(include_footers)
        if sent.done() or self.request.connection.stream.writing():  # type: ignore[union-attr]
            return sent
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def send_gateway_error(self, err: GatewayError) -> None:
        if self._headers_written:
            return
        self._take_check()  # its rate headers go on the error answer too
        self.clear()
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Request-Id", self.request_id)
        self.set_retry_headers(err.status)
        if err.retry_after is not None:
            self.set_header("Retry-After", str(max(1, math.ceil(err.retry_after))))
        self.finish(self.render_error(err))

    def set_retry_headers(self, status: int) -> None:
        # The SDKs (and Claude Code) obey this header before their own status rules: without
        # it a bad key is retried up to ten times with backoff.
        self.set_header("x-should-retry", "true" if client_should_retry(status) else "false")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, GatewayError):
            self.send_gateway_error(exc)
            return
        write_json_error(self, status_code, self.render_error)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, GatewayError):
            return
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        now = time.monotonic()
        elapsed = (now - self.started_at) * 1000
        ttfb = ((self.first_byte or now) - self.started_at) * 1000
        attempts = getattr(self.attempts, "count", 0)
        # Only table names become labels: clients' typos must not grow the series forever.
        catalogue = self.services.catalogue
        table = catalogue.table if catalogue is not None else STATIC
        model = found.id if (found := table.find(self.model_name)) else "-"
        status = CLIENT_CLOSED if self._left_unanswered else self.get_status()
        observe_request(self.route, model, status, elapsed / 1000, ttfb / 1000)
        self._take_check()
        if self.caller is not None:
            self.count_usage(self.caller, model, status)
        if self.admits:
            failed = status >= 400 or (self.metered is not None and self.metered.failed)
            self.services.usage.observe(failed, ttfb)
        if self.span is not None:
            self.end_span(status, ttfb / 1000, attempts)
        logger.info(
            "{} {} {} model={} status={} {:.1f}ms ttfb={:.1f}ms upstream_attempts={}",
            self.request_id,
            self.request.method,
            shown(self.request.path),
            shown(self.model_name),
            status,
            elapsed,
            ttfb,
            attempts,
        )

    def end_span(self, status: int, ttfb: float, attempts: int) -> None:
        metered = self.metered
        attrs: dict[str, object] = {
            "http.response.status_code": status,
            "zai.upstream_attempts": attempts,
        }
        if self.first_byte is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = ttfb
        if metered is not None:
            attrs["gen_ai.usage.input_tokens"] = metered.input_tokens
            attrs["gen_ai.usage.output_tokens"] = metered.output_tokens
            if metered.finish_reason:
                attrs["gen_ai.response.finish_reasons"] = [metered.finish_reason]
        error = metered.error if metered is not None else ""
        end_request_span(self.span, attrs, error or (str(status) if status >= 400 else ""))

    def count_usage(self, caller: Caller, model: str, status: int) -> None:
        metered = self.metered
        tokens_in = metered.input_tokens if metered is not None else 0
        tokens_out = metered.output_tokens if metered is not None else 0
        error = status >= 400 or (metered is not None and metered.failed)
        self.services.usage.add(caller.id, caller.name, model, tokens_in, tokens_out, error)
        observe_key(caller.id, caller.name, model, status, tokens_in, tokens_out)


_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _files(services: Any) -> FileCache:
    """The shared cache of uploaded images (a view on Redis: nothing to keep per process)."""
    return FileCache(services.redis, services.keys, services.settings.image_cache_ttl)


def write_json_error(
    handler: RequestHandler,
    status_code: int,
    render: Callable[[GatewayError], bytes] = error_body,
) -> None:
    """tornado's own error answers (404, 405, a 500 from a bug) in the JSON error shape, from
    any handler: ``write_error`` of API routes and of the docs and its static files."""
    kind = _KINDS.get(status_code, "invalid_request" if status_code < 500 else "internal")
    where = f"{handler.request.method} {shown(handler.request.path)}"
    detail = f"{where}: {handler._reason}" if kind != "internal" else f"{where} failed"
    handler.set_header("Content-Type", "application/json")
    handler.set_header("x-should-retry", "true" if client_should_retry(status_code) else "false")
    handler.finish(render(GatewayError(kind, detail)))


class NotFound(ApiHandler):
    route = "not_found"
    keyed = False

    @api
    async def get(self, *args: str) -> None:
        raise GatewayError("not_found", f"no route {self.request.method} {self.request.path}")

    post = put = delete = patch = get
