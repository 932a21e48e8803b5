"""Traces: OpenTelemetry spans for each completion, off unless ``OTEL_EXPORTER_OTLP_ENDPOINT``.

Owns ``setup_tracing``/``stop_tracing`` (one tracer provider per worker process, exporting
OTLP over HTTP from the SDK's own thread, so the loop never waits on the collector),
``request_span`` (the request's SERVER span, named and attributed as the GenAI semantic
conventions say: ``chat {gen_ai.request.model}``, ``gen_ai.*`` request and usage attributes,
``gen_ai.response.time_to_first_chunk``; it joins the caller's trace when the request carries
a W3C ``traceparent``, and ends when the answer or stream does), ``within`` (runs the
completion task under it) and ``traced`` (a child span around one step: the Redis pick, the
pacing wait, each upstream attempt). Off, nothing of opentelemetry is imported and each step
costs one global read. Attributes never hold a token, key, prompt or answer: models, counts,
routes by their masked label, error kinds.
"""

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from loguru import logger

if TYPE_CHECKING:  # settings import the egress, which is traced: no cycle at run time
    from server.settings import Settings

__all__ = [
    "end_request_span",
    "request_attrs",
    "request_span",
    "setup_tracing",
    "stop_tracing",
    "traced",
    "within",
]

P = ParamSpec("P")
R = TypeVar("R")
Attrs = dict[str, object]  # OpenTelemetry attribute values: str, bool, int, float, lists

_tracer: Any = None  # the SDK's Tracer while tracing is on
_provider: Any = None

PROVIDER = "z.ai"  # gen_ai.provider.name


def setup_tracing(settings: "Settings") -> None:
    """Start exporting spans to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP/HTTP, ``/v1/traces``).
    Called in each worker after the fork: the SDK's export thread does not survive one."""
    global _tracer, _provider
    endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/")
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": settings.otel_service_name})
    _provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = _provider.get_tracer("zai-gateway")
    logger.info("traces: OTLP to {}/v1/traces", endpoint)


def stop_tracing() -> None:
    """Send what is queued and stop the export thread (at shutdown)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def request_span(
    operation: str, model: str, headers: Mapping[str, str], attrs: Attrs, started: float
) -> Any | None:
    """The request's span (None while tracing is off), a child of the caller's
    ``traceparent`` if it sent one, begun when the request arrived (``started``, on the
    monotonic clock)."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    attributes: Attrs = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": model,
        **attrs,
    }
    return _tracer.start_span(
        f"{operation} {model}",
        context=extract(headers),  # tornado's headers: case-insensitive
        kind=SpanKind.SERVER,
        attributes=attributes,
        start_time=time.time_ns() - int((time.monotonic() - started) * 1e9),
    )


def request_attrs(conv: Any, api: str) -> Attrs:
    """The GenAI request attributes a ``Conversation`` has (those it leaves unset are left out)."""
    attrs: Attrs = {"gen_ai.output.type": "json" if conv.output_format else "text"}
    for name, value in (
        ("gen_ai.request.max_tokens", conv.max_tokens),
        ("gen_ai.request.temperature", conv.temperature),
        ("gen_ai.request.top_p", conv.top_p),
    ):
        if value is not None:
            attrs[name] = value
    attrs["zai.api"] = api  # the face's route: chat.completions, messages, responses
    attrs["zai.tools"] = len(conv.tools)
    return attrs


def end_request_span(span: Any, attrs: Attrs, error: str = "") -> None:
    """End the request's span with what the answer came to (``error``: its error kind)."""
    if error:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
        attrs["error.type"] = error
    span.set_attributes(attrs)
    span.end()


async def within(span: Any | None, work: Awaitable[R]) -> R:
    """Run ``work`` with ``span`` as the current span (its steps become its children)."""
    if span is None:
        return await work
    from opentelemetry import context, trace

    token = context.attach(trace.set_span_in_context(span))
    try:
        return await work
    finally:
        context.detach(token)


def traced(
    name: str, attrs: Callable[..., Attrs] | None = None, client: bool = False
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """A child span around each call of an async function made inside a request's span
    (calls outside one, such as background chat deletes, stay untraced). ``attrs`` gets the
    call's arguments; a raised error's ``kind`` (or class name) becomes ``error.type``."""

    def wrap(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if _tracer is None:
                return await fn(*args, **kwargs)
            return await _step(name, attrs, client, fn, *args, **kwargs)

        return call

    return wrap


async def _step(
    name: str,
    attrs: Callable[..., Attrs] | None,
    client: bool,
    fn: Callable[..., Coroutine[Any, Any, R]],
    *args: Any,
    **kwargs: Any,
) -> R:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if not trace.get_current_span().is_recording():
        return await fn(*args, **kwargs)
    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    attributes = attrs(*args, **kwargs) if attrs is not None else {}
    with _tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            kind_of = getattr(exc, "kind", None) or type(exc).__name__
            span.set_attribute("error.type", kind_of)
            span.set_status(Status(StatusCode.ERROR, kind_of))
            raise
