"""What every API route shares: the body, keys, errors, limits, and one log line per request.

Owns ``ApiHandler`` (the base of every route: it knows no face and runs no completion; the
completion routes' machinery is ``server.web.completion_handler.CompletionHandler``) and
``api`` (a decorator that turns a ``GatewayError`` raised anywhere in a route into the error
body of the API that route speaks, after checking the key of a keyed route),
``check_api_key`` (constant-time, ``Authorization: Bearer`` or ``x-api-key``), ``NotFound``,
and the access line: request id, method, path, model, status, latency and time to first
byte, upstream attempts. The client's path and model name are ``shown`` (control characters
escaped, cut at 100 characters); a request the client abandoned before its answer began is
logged with status 499.

Keys: ``AUTH_TOKEN(S)`` are checked in memory (unlimited); an issued key (``sk-zai-...``)
is checked in Redis by one Lua call (``state.client_keys``: secret hash, disabled, expiry,
models, limits). A route that runs a completion (``admits = True``) makes that call when the
conversation is known, so its limits are checked and its estimate reserved with it (and,
with pooled tokens, in the same round trip as the token pick); other routes make it before
the route runs. Nothing about a key is cached, so a disabled key is refused on its very next
request. Every answered request is counted per key (``state.usage``, flushed in the
background).
"""

import asyncio
import functools
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from server.core.admission import refusal
from server.core.chat import Conversation
from server.core.errors import GatewayError, client_should_retry, shown
from server.core.models import STATIC, Model, ModelTable
from server.core.token_estimate import estimate_conversation
from server.ids import hex_id
from server.logs import access
from server.ops.metrics import observe_key, observe_request
from server.web.callers import ANONYMOUS, Caller, Metered, rate_headers
from server.web.errors import error_body
from state.client_keys import Admission, parse_secret

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
        self._task: asyncio.Future[None] | None = None  # the work, cancelled if the client leaves
        self._left_unanswered = False
        self._body: list[bytes] = []
        self._body_size = 0
        self.caller: Caller | None = None
        self._issued: tuple[str, str] | None = None  # an issued key's (id, secret hash)
        self._charged = False  # its request was counted against its limits
        self._rate_headers: dict[str, str] = {}
        self.metered: Metered | None = None  # what the answer used (completions)
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

    def on_connection_close(self) -> None:
        # The client left before a status line reached it: not a 200 (nginx's 499).
        self._left_unanswered = not self._headers_written
        if self._task is not None and not self._task.done():
            self._task.cancel()
        # Gone before its body was read (while prepare() ran): tornado's own ends the
        # request's task, which else waits for that body for ever (a task per such client).
        super().on_connection_close()

    def flush(self, include_footers: bool = False) -> "asyncio.Future[None]":
        """Send what was written. The future (``server.web.http1.Exchange``'s) is done at once
        unless the client is behind (more queued than the transport's high-water mark), then
        when it has caught up: that is the backpressure, without a loop turn per streamed
        event while the client keeps up."""
        if self.first_byte is None:
            self.first_byte = time.monotonic()
            self.before_answer()
        return super().flush(include_footers)

    def send_gateway_error(self, err: GatewayError) -> None:
        if self._headers_written:
            return
        self.before_answer()  # what it settles goes on the error answer too
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
        self.before_answer()
        if self.caller is not None:
            self.count_usage(self.caller, model, status)
        self.finishing(status, ttfb, attempts)
        access(
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

    def before_answer(self) -> None:
        """Runs before the first byte or an error answer (and at the end, if neither came):
        where a subclass settles what the answer's headers must say."""

    def finishing(self, status: int, ttfb_ms: float, attempts: int) -> None:
        """Runs once the request is over, after it was counted: a subclass's own bookkeeping."""

    def count_usage(self, caller: Caller, model: str, status: int) -> None:
        metered = self.metered
        tokens_in = metered.input_tokens if metered is not None else 0
        tokens_out = metered.output_tokens if metered is not None else 0
        error = status >= 400 or (metered is not None and metered.failed)
        self.services.usage.add(caller.id, caller.name, model, tokens_in, tokens_out, error)
        observe_key(caller.id, caller.name, model, status, tokens_in, tokens_out)


_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


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
