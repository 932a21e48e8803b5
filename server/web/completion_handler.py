"""What the routes that run a completion add to every API route: the run, its limits, its end.

Owns ``CompletionHandler``, the base of the faces' completion routes (Chat Completions,
Messages, Responses): it runs one completion (``complete``) into the face's sink until it
ends, the client leaves (the upstream is closed) or the instance drains (``abort``); holds
the ``REQUEST_TIMEOUT`` deadline until the answer begins; sends an issued key's check with
the pool's token pick (``key_check``: one round trip; ``ApiHandler.admit`` alone otherwise)
and settles its reservation with the real usage after; notes the trace span and the traffic
counters. The face-neutral rest of a route (body, keys, errors, access line) is
``server.web.handler.ApiHandler``.
"""

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from loguru import logger
from redis.exceptions import RedisError
from tornado.iostream import StreamClosedError

from server.core.chat import Conversation, Sink
from server.core.completion import Attempts, complete
from server.core.continuation import conversation_key
from server.core.errors import GatewayError
from server.core.images import check_images
from server.core.token_estimate import estimate_conversation
from server.credentials.sources import PooledTokens
from server.ops.tracing import end_request_span, request_attrs, request_span, within
from server.web.callers import Metered
from server.web.handler import ApiHandler
from state.client_keys import KeyCheck
from state.files import FileCache

__all__ = ["CompletionHandler"]


class CompletionHandler(ApiHandler):
    admits = True  # an issued key is checked with its limits once the conversation is known

    def initialize(self, services: Any) -> None:
        super().initialize(services)
        self._aborted: GatewayError | None = None
        self._check: KeyCheck | None = None  # an issued key's check, sent with the token pick
        self.span: Any = None  # the request's trace span, while tracing is on

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

    def before_answer(self) -> None:
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
        self.before_answer()
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

    def finishing(self, status: int, ttfb_ms: float, attempts: int) -> None:
        failed = status >= 400 or (self.metered is not None and self.metered.failed)
        self.services.usage.observe(failed, ttfb_ms)
        if self.span is not None:
            self.end_span(status, ttfb_ms / 1000, attempts)

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


def _files(services: Any) -> FileCache:
    """The shared cache of uploaded images (a view on Redis: nothing to keep per process)."""
    return FileCache(services.redis, services.keys, services.settings.image_cache_ttl)
