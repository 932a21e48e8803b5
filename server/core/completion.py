"""The core: one completion, from a neutral ``Conversation`` to a ``Sink``.

Owns ``complete()``, the request path read top to bottom: take a credential -> open the
upstream stream -> read it, handing what grew to the sink -> finish -> release the
credential with what the attempt said about it. A failure before any byte reached the client
is retried (bounded by ``UPSTREAM_RETRIES``, only for kinds whose rule allows it) with a new
credential (an upstream that stalled midway through its answer at most once: each stall costs
a whole ``UPSTREAM_IDLE_TIMEOUT``); after that the sink reports it (an HTTP error, or an error
event mid-stream), a 504 saying how many attempts it made over how long.
Cancelling the task (the client hung up) closes the upstream socket at once. Structured
output (``Conversation.output_format``) wraps whole completions: ``complete_structured``
checks the answer and asks once more when it is not valid.
Each attempt leaves by an egress route whose WAF breaker is closed; a WAF block opens that
route's breaker for every replica and moves the request to another open route (the client
sees nothing), or, with none left, answers ``waf_blocked`` with the soonest return.
Images (vision) are read once before the attempts (``server/core/images.py``); each attempt
uploads them with its own user token, or finds them in the shared upload cache, first.
When the upstream wants a captcha (``ZAI_CAPTCHA``), each attempt carries one single-use param:
the caller's own first, then one from the shared pool, then one from the solver sidecar; a
rejected param is retried once only with another param in hand, and the token is never blamed.
"""

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from loguru import logger
from redis.exceptions import RedisError

from server.captcha.source import CaptchaSource
from server.core.catalogue import Catalogue
from server.core.chat import Conversation, Ending, Sink
from server.core.chats import ThrowawayChats
from server.core.continuation import Continuations, Plan
from server.core.errors import GatewayError
from server.core.images import gather
from server.core.models import Model
from server.credentials.sources import TokenSource
from server.egress import ROUTE_FAULTS, Egress, Route
from server.emulation.stop_sink import StopSequenceReached, StopSequenceSink
from server.emulation.structured import complete_structured
from server.emulation.tool_parse import ToolCallScanner
from server.emulation.tool_prompt import render_for_upstream
from server.emulation.tool_sink import ToolCallSink
from server.ops.metrics import ATTEMPT_ERRORS, RETRIES
from server.ops.tracing import traced
from server.settings import Settings
from server.transport import TransportError
from server.zai.client import ZaiClient
from server.zai.identity import Credential
from server.zai.stream import AnswerStream
from state.client_keys import KeyCheck
from state.conversations import Thread
from state.files import FileCache

__all__ = ["Attempts", "answer_sink", "complete"]


@dataclass(slots=True)
class Attempts:
    """What happened upstream for one request, for the request log line and the 504s."""

    count: int = 0
    started: float = field(default_factory=time.monotonic)

    def tally(self) -> str:
        """How many attempts, over how long: what a client waiting for nothing is told.

        >>> Attempts(2, time.monotonic() - 12.34).tally()
        '2 upstream attempts in 12.3 s'
        """
        plural = "" if self.count == 1 else "s"
        return f"{self.count} upstream attempt{plural} in {time.monotonic() - self.started:.1f} s"


async def complete(
    conv: Conversation,
    sink: Sink,
    tokens: TokenSource,
    client: ZaiClient,
    settings: Settings,
    attempts: Attempts | None = None,
    captchas: CaptchaSource | None = None,
    egress: Egress | None = None,
    catalogue: Catalogue | None = None,
    chats: ThrowawayChats | None = None,
    files: FileCache | None = None,
    continuations: Continuations | None = None,
    key_check: KeyCheck | None = None,
) -> None:
    """Answer ``conv`` into ``sink``. ``key_check``: an issued key's check, run with the
    first token pick (one round trip); a refusal then ends the request as its error."""
    attempts = attempts or Attempts()
    captchas = captchas or CaptchaSource("off")
    if any(not image.data for image in conv.images):
        try:  # read once for all the attempts (and the structured retry) below
            await gather(
                conv,
                settings.image_max_bytes,
                settings.image_fetch_timeout,
                settings.image_fetch_private,
            )
        except GatewayError as err:
            await sink.fail(err)
            return
    if conv.output_format is not None:
        # The schema goes into the prompt and the answer is checked (retried once) around
        # whole completions, each with its own upstream attempts below.
        async def once(attempt: Conversation, holder: Sink) -> None:
            await complete(
                attempt,
                holder,
                tokens,
                client,
                settings,
                attempts,
                captchas,
                egress,
                catalogue,
                chats,
                files,
                continuations,
            )

        await complete_structured(conv, sink, conv.output_format, once)
        return
    caller = conv.captcha  # used once, on the first attempt that needs one
    rejected: GatewayError | None = None
    last: GatewayError | None = None  # the previous attempt's failure
    retries = settings.upstream_retries
    upstream_conv = render_for_upstream(conv)
    missing = ""  # the sidecar's failure, when it was asked and gave no param
    unseen = ""  # a param sent on a blocked route: the WAF stopped it, the upstream never saw it
    thread = continuations.thread(conv) if continuations is not None else None
    fresh = False  # a continued chat the upstream refused: the retries start a fresh one
    try:
        while True:
            attempts.count += 1
            # A fresh scanner per attempt: a retry never sees text held back by the failed one.
            attempt_sink = answer_sink(sink, conv, settings.scan_limit)
            param, unseen = unseen, ""
            if param:
                pass
            elif caller and captchas.mode != "off":
                param, caller = caller, ""
            elif await captchas.needed(client):
                # A sidecar that failed once is not asked again for this request: a retry would
                # only double the client's wait for the same answer.
                param, why = await captchas.take(ask_sidecar=not missing)
                missing = missing or why
            if rejected is not None and not param:
                await sink.fail(rejected)  # no other param to try: the first answer stands
                return
            route, plan = None, None
            try:
                if egress is not None:
                    route = await egress.pick(conv.model.id)
                try:
                    # Images are uploaded with the token that then asks: a user's (6.9).
                    cred = await _acquire(
                        tokens,
                        replace(conv.model, guest=False) if conv.images else conv.model,
                        thread,
                        settings.zai_conversation_wait,
                        key_check,
                    )
                except GatewayError as err:
                    # No usable token is never retried (the next pick would find the same pool).
                    # A retry that finds none reports what the upstream said last (its 429, its
                    # 500) with the pool's wait: never a bare 503 for a pool the upstream emptied.
                    ATTEMPT_ERRORS.labels(err.kind).inc()
                    logger.info(
                        "{} no upstream token: {} ({})", conv.request_id, err.kind, err.detail
                    )
                    if last is not None:
                        last.retry_after = last.retry_after or err.retry_after
                    await sink.fail(last or err)
                    return
                turn = None
                if thread is not None and continuations is not None:
                    plan = continuations.plan(upstream_conv, cred, fresh)
                    turn = _Turn(continuations, thread, plan)
                    logger.debug(
                        "{} conversation: {}",
                        conv.request_id,
                        f"continued, {len(plan.conv.turns)} new turn(s)"
                        if plan.continued
                        else "fresh chat",
                    )
                await _attempt(
                    plan.conv if plan is not None else upstream_conv,
                    attempt_sink,
                    cred,
                    tokens,
                    client,
                    param,
                    route,
                    settings.stream_holdback,
                    catalogue,
                    chats,
                    files,
                    turn,
                )
                return
            except GatewayError as err:
                last = err
                if plan is not None and plan.continued and err.kind != "session_busy":
                    fresh = True  # e.g. the upstream lost the chat: the whole history next
                moved = False  # a shut route (WAF, dead proxy), another open: the request moves
                if err.kind in ROUTE_FAULTS and route is not None and err.retry_after is None:
                    moved = await egress.trip(route, err)  # type: ignore[union-attr]
                    unseen = param if moved else ""
                rejected = err if err.kind == "captcha_required" else None
                if rejected is not None:
                    err.retry_after = captchas.retry_after
                    if missing and not param:  # why the sidecar had none: what to fix
                        err.detail = f"{err.detail}; {missing}"
                ATTEMPT_ERRORS.labels(err.kind).inc()
                retry = not sink.started and (
                    moved or attempts.count <= min(err.rule.retry, retries)
                )
                logger.info(
                    "{} upstream attempt {} failed: {} ({}){}",
                    conv.request_id,
                    attempts.count,
                    err.kind,
                    err.detail,
                    "; retrying" if retry else "",
                )
                if not retry:
                    if err.status == 504:
                        err.detail = f"{err.detail} ({attempts.tally()})"
                    await sink.fail(err)
                    return
                RETRIES.inc()
                if err.kind == "session_busy":  # the chat's previous turn may end meanwhile
                    await asyncio.sleep(_SESSION_BUSY_PAUSE)
                if err.rule.refresh_version:
                    await client.refresh_fe_version(stale=await client.fe_version())
    finally:
        if thread is not None and continuations is not None:
            continuations.end(thread)


def answer_sink(sink: Sink, conv: Conversation, scan_limit: int) -> Sink:
    """The face's sink behind the emulation sinks one attempt needs (fresh ones each time)."""
    # Stop sequences sit inside the tool sink: they see only the text the scanner lets
    # through, so a sequence inside a call's arguments never cuts the call.
    out: Sink = StopSequenceSink(sink, conv.stop) if conv.stop else sink
    if conv.tools and conv.tool_choice != "none":
        known = {t.name for t in conv.tools}
        out = ToolCallSink(out, ToolCallScanner(known, scan_limit, conv.parallel_tool_calls))
    return out


def _attempt_attrs(
    conv: Conversation,
    sink: Sink,
    cred: Credential,
    tokens: TokenSource,
    client: ZaiClient,
    captcha: str,
    route: Route | None,
    *rest: object,
) -> dict[str, object]:
    """What the trace's span of one upstream attempt says (nothing secret)."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "z.ai",
        "gen_ai.request.model": conv.model.upstream,
        "zai.credential": cred.role,
        "zai.route": route.label if route is not None else "direct",
    }


@traced("chat upstream", _attempt_attrs, client=True)
async def _attempt(
    conv: Conversation,
    sink: Sink,
    cred: Credential,
    tokens: TokenSource,
    client: ZaiClient,
    captcha: str,
    route: Route | None,
    holdback: int = 0,
    catalogue: Catalogue | None = None,
    chats: ThrowawayChats | None = None,
    files: FileCache | None = None,
    turn: "_Turn | None" = None,
) -> None:
    if turn is not None:  # a conversation's chat: kept upstream for its next turn
        chats = None
        chat_id: str | None = turn.plan.chat_id
    else:
        chat_id = None
    logger.debug("{} upstream {} as {}", conv.request_id, conv.model.upstream, cred)
    outcome, reason, failure = "ok", "", None
    try:
        if client.dialect.create_chats and (turn is None or not turn.plan.continued):
            # The page makes each chat before its first completion (PROTOCOL.md 6.4)
            chat_id = await client.create_chat(cred, conv, route)
            if turn is not None:
                turn.plan.chat_id = chat_id  # what the conversation's next turn continues
        if chats is not None:
            chat_id = chats.begin(cred, chat_id or "")
        uploaded = await _upload(conv, cred, client, route, files) if conv.images else None
        if chats is not None and chat_id:
            await chats.written(chat_id)
        exchange = await client.open_completion(
            cred,
            conv,
            captcha,
            route,
            chat_id,
            uploaded,
            turn.plan.parent_id if turn is not None else None,
            turn.plan.message_id if turn is not None else None,
        )
        stream = AnswerStream(conv.model.id, holdback)
        answering = False  # the upstream has begun the answer: a timeout now is a stall
        # With a search tool the client sees each search before the answer text after it
        mark: tuple[int, int, int] | None = None
        try:
            try:
                async for chunk in exchange:
                    answering = True
                    for reasoning, answer in stream.slices(chunk):
                        if conv.search and answer and mark != stream.search_mark():
                            mark = stream.search_mark()
                            reasoning = await _searched(sink, stream, reasoning)
                        if reasoning or answer:
                            await sink.delta(reasoning, answer)
                        if stream.tired():
                            # Chunks queued behind this one are taken without a pause: give
                            # other clients a turn, or one long answer holds the worker.
                            await asyncio.sleep(0)
                    if stream.done:
                        break
                reasoning, answer = stream.end()
            except StopSequenceReached:
                reasoning = answer = ""  # the answer ends here; the upstream is closed below
        except TransportError as exc:
            kind = ("stalled" if answering else "timeout") if exc.timeout else "unavailable"
            raise GatewayError(kind, str(exc), model=conv.model.id) from None
        finally:
            exchange.close(drain=stream.done)  # the connection is kept once the answer ends
        if conv.search and answer and mark != stream.search_mark():
            reasoning = await _searched(sink, stream, reasoning)
        if reasoning or answer:
            await sink.delta(reasoning, answer)
        logger.debug("{} upstream said done: {!r}", conv.request_id, stream)
        reasoning, answer = stream.final()
        found = stream.searches() if conv.search else ()
        if turn is not None:  # the upstream holds the turn: the next may begin at once
            turn.done(cred, answer)
        await sink.finish(
            Ending(stream.finish_reason, stream.usage, reasoning, answer, None, found)
        )
        if catalogue is not None:
            catalogue.offer(cred)  # a token that works reads its tier's model list, if stale
    except GatewayError as err:
        failure, outcome, reason = err, err.rule.token, f"{err.kind}: {err.detail}"[:200]
        raise
    finally:
        if chats is not None and chat_id is not None:
            chats.end(cred, chat_id)  # deleted upstream in the background, whatever happened
        wait = await tokens.release(cred, outcome, reason)
        if failure is not None and failure.retry_after is None and wait:
            failure.retry_after = wait  # a rate-limited token: when it is back


@dataclass(slots=True)
class _Turn:
    """One attempt's turn of a continued conversation."""

    continuations: Continuations
    thread: Thread
    plan: Plan

    def done(self, cred: Credential, answer: str) -> None:
        self.continuations.done(self.thread, cred, self.plan, answer)


_SESSION_BUSY_PAUSE = 0.5  # seconds before asking again a chat the upstream said is busy
_BUSY_POLL = 0.1  # seconds between looks at a conversation whose turn another request holds


async def _acquire(
    tokens: TokenSource,
    model: Model,
    thread: Thread | None,
    wait: float,
    check: KeyCheck | None = None,
) -> Credential:
    """A credential; with a conversation, once its previous turn has ended (waiting up to
    ``wait`` seconds, then the 409 says so). ``check`` runs with the first pick only (it
    holds its answer from then on)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await tokens.acquire(model, thread, check)
        except GatewayError as err:
            left = deadline - time.monotonic()
            if err.kind != "conversation_busy" or left <= 0:
                raise
            await asyncio.sleep(min(_BUSY_POLL, left))


async def _searched(sink: Sink, stream: AnswerStream, reasoning: str) -> str:
    """Before answer text that follows new search output: the thinking so far, then the
    searches (the face sends the ones it has not sent). Returns the reasoning left to send."""
    if reasoning:
        await sink.delta(reasoning, "")
    await sink.searched(stream.searches())
    return ""


async def _upload(
    conv: Conversation,
    cred: Credential,
    client: ZaiClient,
    route: Route | None,
    cache: FileCache | None,
) -> dict[str, dict[str, Any]]:
    """The upstream file of every image, by digest: cached for this account, else uploaded
    now (one at a time: each upload is an upstream call the route's pacing counts)."""
    images = {image.digest: image for image in conv.images}
    found: dict[str, dict[str, Any]] = {}
    if cache is not None:
        try:
            found = await cache.get(cred.user_id, list(images))
        except RedisError as exc:
            logger.warning("{} image cache unreachable: {}", conv.request_id, exc)
    new = {}
    for digest, image in images.items():
        if digest not in found:
            new[digest] = await client.upload_image(cred, image, route)
    if new:
        logger.debug("{} uploaded {} image(s) as {}", conv.request_id, len(new), cred)
        if cache is not None:
            try:
                await cache.put(cred.user_id, new)
            except RedisError as exc:
                logger.warning("{} image cache unreachable: {}", conv.request_id, exc)
    return {digest: found.get(digest) or new[digest] for digest in images}
