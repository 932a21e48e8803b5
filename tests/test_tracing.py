"""OpenTelemetry traces (issue 17 item 4), as an operator with a collector sees them.

``python -m server`` runs as a real process with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at
a local OTLP/HTTP receiver started here (it decodes the protobuf the SDK's exporter posts to
``/v1/traces``); the openai SDK is the client and the cassette fake the upstream. The batch
delay is a minute, so every span seen arrived through the flush at SIGTERM: nothing is lost
when a pod stops.
"""

import asyncio
import signal
import subprocess
import sys

import openai
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream
from tests.processes import gateway_env
from tests.test_cli import _free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class _Receiver(RequestHandler):
    def initialize(self, spans: list[Span]) -> None:
        self.spans = spans

    def post(self) -> None:
        assert self.request.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(self.request.body)
        for resource in export.resource_spans:
            names = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert names["service.name"] == "gw-under-test"
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        self.set_header("Content-Type", "application/x-protobuf")
        self.finish(ExportTraceServiceResponse().SerializeToString())


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def _attrs(span: Span) -> dict[str, object]:
    return {a.key: _value(a.value) for a in span.attributes}


async def test_a_completion_is_one_trace_with_its_steps_and_joins_the_callers():
    spans: list[Span] = []
    sockets = bind_sockets(0, "127.0.0.1")
    receiver = HTTPServer(Application([(r"/v1/traces", _Receiver, {"spans": spans})]))
    receiver.add_sockets(sockets)
    collector = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    # the first completion answers 500: the request retries on another guest and is answered
    fake = FakeUpstream("home", "guest_auth", "error_http_500", "stream_glm5_plain_thinking")
    base = await fake.start()
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=gateway_env(
            AUTH_TOKEN=API_KEY,
            ZAI_BASE_URL=base,
            LISTEN_PORT=str(port),
            LISTEN_HOST="127.0.0.1",
            GUEST_RESERVE="0",
            PACING_MIN_GAP_MS="5",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector + "/",
            OTEL_SERVICE_NAME="gw-under-test",
            OTEL_BSP_SCHEDULE_DELAY="60000",  # nothing leaves before the flush at SIGTERM
        ),
    )
    loop = asyncio.get_running_loop()
    try:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0
        )
        for _ in range(100):
            try:
                await client.models.list()
                break
            except openai.APIConnectionError:
                await asyncio.sleep(0.1)
        stream = await client.chat.completions.create(
            model="GLM-4.5",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=300,
            extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.startswith("Hi there!")
        reply = await client.chat.completions.create(
            model="GLM-4.5", messages=[{"role": "user", "content": "hi again"}]
        )
        assert reply.choices[0].finish_reason == "stop"
        await client.close()
        assert not spans, "exported before the batch delay: the setting was not followed"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = (await loop.run_in_executor(None, proc.communicate, None, 30))[0]
        await fake.close()
        receiver.stop()
    assert proc.returncode == 0, output
    assert "traces: OTLP to " + collector + "/v1/traces" in output, output

    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id.hex(), []).append(span)
    assert len(by_trace) == 2, [(s.name, s.trace_id.hex()) for s in spans]
    first = by_trace.pop(TRACE_ID)  # the caller's trace, joined
    (second,) = by_trace.values()

    (root,) = [s for s in first if s.kind == Span.SPAN_KIND_SERVER]
    assert root.name == "chat GLM-4.5"
    assert root.parent_span_id.hex() == PARENT_ID
    attrs = _attrs(root)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "z.ai"
    assert attrs["gen_ai.request.model"] == "GLM-4.5"
    assert attrs["gen_ai.request.max_tokens"] == 300
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["http.response.status_code"] == 200
    assert attrs["zai.upstream_attempts"] == 2
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    duration = (root.end_time_unix_nano - root.start_time_unix_nano) / 1e9
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < duration
    assert root.status.code != Status.STATUS_CODE_ERROR

    parent = {s.span_id: s.parent_span_id for s in first}
    for span in first:  # every step descends from the request's span
        at, hops = span.span_id, 0
        while at != root.span_id:
            at, hops = parent[at], hops + 1
            assert at in parent and hops < 5, span.name
    children = [s for s in first if s.parent_span_id == root.span_id]
    attempts = sorted(
        (s for s in children if s.name == "chat upstream"), key=lambda s: s.start_time_unix_nano
    )
    assert len(attempts) == 2 and {s.kind for s in attempts} == {Span.SPAN_KIND_CLIENT}
    failed, answered = attempts
    assert _attrs(failed)["error.type"] == "unavailable", _attrs(failed)  # its 500
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert answered.status.code != Status.STATUS_CODE_ERROR
    assert _attrs(answered)["zai.route"] == "direct"
    assert _attrs(answered)["gen_ai.request.model"] != "GLM-4.5"  # the upstream's own id
    assert answered.end_time_unix_nano <= root.end_time_unix_nano  # ends with the stream
    picks = [s for s in children if s.name == "pick guest"]
    assert len(picks) == 2 and all(_attrs(s)["zai.source"] == "guests" for s in picks)
    for attempt in attempts:  # each waited for its slot on the route
        assert any(s.name == "pacing wait" and s.parent_span_id == attempt.span_id for s in first)

    (root2,) = [s for s in second if s.kind == Span.SPAN_KIND_SERVER]
    assert not root2.parent_span_id, "no traceparent: a trace of its own"
    assert _attrs(root2)["zai.upstream_attempts"] == 1

    shown = repr([(s.name, _attrs(s)) for s in spans])
    guest_tokens = [r.headers.get("Authorization", "")[7:] for r in fake.requests]
    for secret in [API_KEY, *filter(None, guest_tokens)]:
        assert secret not in shown
