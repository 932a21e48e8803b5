"""The three faces' renderers driven directly, as the core drives them: the bytes each sink
writes are decoded with the API document's Structs (``server/ops/openapi_schema.py``) and the
official SDKs' own types (``openai``, ``anthropic``), and the event order each API promises
is checked (role first, ``[DONE]`` last; message_start .. message_stop with balanced blocks;
sequence numbers that count up)."""

import asyncio
import base64
import hashlib
import json
import typing

import msgspec
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk as SdkChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from server.core.chat import Ending, ToolCall, Usage, WebSearch
from server.core.errors import GatewayError
from server.faces.anthropic.render import AnthropicResult, AnthropicStream
from server.faces.anthropic.render import error_body as anthropic_error_body
from server.faces.openai.render import OpenAIResult, OpenAIStream
from server.faces.responses.render import ResponsesResult, ResponsesStream, response_head
from server.faces.responses.tools import Offered
from server.ops.openapi_schema import ChatCompletion, ChatCompletionChunk, ErrorBody

USAGE = Usage(prompt_tokens=1921, completion_tokens=206, total_tokens=2127, cached_tokens=1536)
CALL = ToolCall("call_abc123", "get_weather", '{"city": "Paris"}')
SEARCH = WebSearch("Elon Musk news this week", (("Weekly roundup", "https://news.example.com/r"),))


class Out:
    """A Writer that keeps what a client would receive."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = b""
        self.error: GatewayError | None = None
        self.flushes = 0

    def set_header(self, name: str, value: str) -> None:
        self.headers[name] = value

    def write(self, chunk: bytes) -> None:
        self.body += chunk

    async def flush(self) -> None:
        self.flushes += 1

    def send_gateway_error(self, err: GatewayError) -> None:
        self.error = err

    def sse(self) -> list[tuple[str | None, bytes]]:
        """(event name, data) of every event written."""
        events = []
        for block in self.body.decode().split("\n\n"):
            if not block:
                continue
            name, data = None, b""
            for line in block.split("\n"):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:].encode()
            events.append((name, data))
        return events


# OpenAI Chat Completions


async def _openai_stream(steps, include_usage=True, legacy=False) -> Out:
    out = Out()
    sink = OpenAIStream(out, "chatcmpl-1", "GLM-4.7", include_usage, legacy)
    for step in steps:
        await step(sink)
    return out


def _chunks(out: Out) -> list[ChatCompletionChunk]:
    events = [data for _, data in out.sse()]
    assert events[-1] == b"[DONE]"
    chunks = [msgspec.json.decode(data, type=ChatCompletionChunk) for data in events[:-1]]
    for data in events[:-1]:
        SdkChunk.model_validate_json(data)
    return chunks


async def test_an_openai_stream_starts_with_the_role_and_ends_with_done():
    end = Ending("stop", USAGE, "Let me think", "Hello")
    out = await _openai_stream(
        [
            lambda s: s.delta("Let me think", ""),
            lambda s: s.delta("", "Hel"),
            lambda s: s.delta("", "lo"),
            lambda s: s.finish(end),
        ]
    )
    chunks = _chunks(out)
    assert out.headers["Content-Type"].startswith("text/event-stream")
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Hello"
    assert "".join(d.reasoning_content or "" for d in deltas) == "Let me think"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] == "stop"
    assert {c.id for c in chunks} == {"chatcmpl-1"}


async def test_with_include_usage_the_last_chunk_carries_usage_and_no_choices():
    out = await _openai_stream([lambda s: s.finish(Ending("stop", USAGE, "", ""))])
    chunks = _chunks(out)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.total_tokens) == (1921, 2127)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1536
    assert all(c.usage is None for c in chunks[:-1])


async def test_without_include_usage_no_chunk_has_a_usage_field():
    out = await _openai_stream([lambda s: s.finish(Ending("stop", USAGE))], include_usage=False)
    assert b'"usage"' not in out.body
    _chunks(out)


async def test_a_streamed_tool_call_gives_index_id_and_name_first_then_arguments():
    second = ToolCall("call_2", "get_time", "{}")
    out = await _openai_stream(
        [
            lambda s: s.tool_call(CALL),
            lambda s: s.tool_call(second),
            lambda s: s.finish(Ending("tool_calls", USAGE)),
        ]
    )
    calls = [tc for c in _chunks(out) if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.index, tc.id) for tc in calls if tc.id] == [(0, "call_abc123"), (1, "call_2")]
    first = [tc for tc in calls if tc.index == 0]
    assert first[0].function.name == "get_weather" and first[0].function.arguments == ""
    assert "".join(tc.function.arguments for tc in first) == CALL.arguments
    assert _chunks(out)[-2].choices[0].finish_reason == "tool_calls"


async def test_a_legacy_functions_stream_says_function_call():
    out = await _openai_stream(
        [lambda s: s.tool_call(CALL), lambda s: s.finish(Ending("tool_calls"))], legacy=True
    )
    chunks = _chunks(out)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert any(d.function_call and d.function_call.name == "get_weather" for d in deltas)
    assert all(d.tool_calls is None for d in deltas)
    assert chunks[-2].choices[0].finish_reason == "function_call"


async def test_a_stop_sequence_is_finish_reason_stop_in_openai_terms():
    out = await _openai_stream([lambda s: s.finish(Ending("stop_sequence", stop_sequence="X"))])
    assert _chunks(out)[-2].choices[0].finish_reason == "stop"


async def test_a_failure_before_any_byte_is_an_http_error_and_after_it_an_error_event():
    err = GatewayError("unavailable", "HTTP 500")
    early = await _openai_stream([lambda s: s.fail(err)])
    assert early.error is err and early.body == b""
    late = await _openai_stream([lambda s: s.delta("", "Hi"), lambda s: s.fail(err)])
    last = msgspec.json.decode(late.sse()[-1][1], type=ErrorBody)
    assert last.error.code == "unavailable" and "HTTP 500" in last.error.message
    assert b"[DONE]" not in late.body


async def test_an_openai_result_is_one_chat_completion():
    out = Out()
    await OpenAIResult(out, "chatcmpl-2", "GLM-4.7").finish(Ending("stop", USAGE, "hmm", "Hi"))
    body = msgspec.json.decode(out.body, type=ChatCompletion)
    SdkCompletion.model_validate_json(out.body)
    message = body.choices[0].message
    assert (message.content, message.reasoning_content, message.tool_calls) == ("Hi", "hmm", None)
    assert body.choices[0].finish_reason == "stop"
    assert body.usage.prompt_tokens_details.cached_tokens == 1536


async def test_an_openai_result_with_calls_lists_them_and_null_content():
    out = Out()
    sink = OpenAIResult(out, "chatcmpl-3", "GLM-4.7")
    await sink.tool_call(CALL)
    await sink.finish(Ending("tool_calls", USAGE, "", ""))
    message = msgspec.json.decode(out.body, type=ChatCompletion).choices[0].message
    assert message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_abc123", "get_weather", '{"city": "Paris"}')
    ]


async def test_a_legacy_result_has_a_function_call_and_no_tool_calls():
    out = Out()
    sink = OpenAIResult(out, "chatcmpl-4", "GLM-4.7", legacy_functions=True)
    await sink.tool_call(CALL)
    await sink.finish(Ending("tool_calls"))
    body = msgspec.json.decode(out.body, type=ChatCompletion)
    assert body.choices[0].message.function_call.name == "get_weather"
    assert body.choices[0].message.tool_calls is None
    assert body.choices[0].finish_reason == "function_call"


# Anthropic Messages

_EVENT = TypeAdapter(RawMessageStreamEvent)


def _anthropic_events(out: Out) -> list[dict]:
    events = []
    for name, data in out.sse():
        value = json.loads(data)
        assert value["type"] == name  # the event line names the data's type
        if name not in ("error", "ping"):  # the SDK's union leaves these two out
            _EVENT.validate_json(data)
        events.append(value)
    return events


async def _anthropic_stream(steps, thinking=True, search=False) -> Out:
    out = Out()
    sink = AnthropicStream(out, "msg_1", "claude-sonnet-4-5", thinking, search)
    try:
        for step in steps:
            await step(sink)
    finally:
        sink.close()
    return out


def _blocks_balanced(events: list[dict]) -> list[str]:
    """The types of the content blocks, checking each starts, gets deltas, and stops in turn."""
    open_index, types = None, []
    for event in events:
        if event["type"] == "content_block_start":
            assert open_index is None and event["index"] == len(types)
            open_index = event["index"]
            types.append(event["content_block"]["type"])
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
    assert open_index is None
    return types


async def test_an_anthropic_stream_is_the_documented_event_sequence():
    end = Ending("stop", USAGE, "Let me think", "Hello")
    out = await _anthropic_stream(
        [
            lambda s: s.delta("Let me think", ""),
            lambda s: s.delta("", "Hello"),
            lambda s: s.finish(end),
        ]
    )
    events = _anthropic_events(out)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert _blocks_balanced(events) == ["thinking", "text"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"]["output_tokens"] == 206
    assert events[-2]["usage"]["cache_read_input_tokens"] == 1536


async def test_a_thinking_block_is_signed_with_a_digest_of_its_text_before_it_stops():
    out = await _anthropic_stream(
        [
            lambda s: s.delta("step one, ", ""),
            lambda s: s.delta("step two", ""),
            lambda s: s.finish(Ending("stop")),
        ]
    )
    deltas = [e["delta"] for e in _anthropic_events(out) if e["type"] == "content_block_delta"]
    assert deltas[-1]["type"] == "signature_delta"
    digest = hashlib.sha256(b"step one, step two").digest()
    assert base64.b64decode(deltas[-1]["signature"]) == digest


async def test_thinking_the_client_disabled_is_not_sent():
    out = await _anthropic_stream(
        [lambda s: s.delta("secret plan", "Hi"), lambda s: s.finish(Ending("stop"))],
        thinking=False,
    )
    assert b"secret plan" not in out.body
    assert _blocks_balanced(_anthropic_events(out)) == ["text"]


async def test_a_tool_call_is_a_tool_use_block_with_its_input_as_json():
    out = await _anthropic_stream(
        [
            lambda s: s.delta("", "Looking."),
            lambda s: s.tool_call(CALL),
            lambda s: s.finish(Ending("tool_calls")),
        ]
    )
    events = _anthropic_events(out)
    assert _blocks_balanced(events) == ["text", "tool_use"]
    start = next(e for e in events if e["type"] == "content_block_start" and e["index"] == 1)
    assert start["content_block"]["id"] == "toolu_abc123"
    assert start["content_block"]["name"] == "get_weather"
    parts = [e["delta"]["partial_json"] for e in events if e.get("index") == 1 and "delta" in e]
    assert json.loads("".join(parts)) == {"city": "Paris"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("stop_sequence", "stop_sequence"),
    ],
)
async def test_each_finish_reason_is_its_anthropic_stop_reason(reason: str, stop_reason: str):
    end = Ending(reason, stop_sequence="END" if reason == "stop_sequence" else None)
    out = await _anthropic_stream([lambda s: s.finish(end)])
    delta = _anthropic_events(out)[-2]["delta"]
    assert delta["stop_reason"] == stop_reason
    assert delta["stop_sequence"] == end.stop_sequence


async def test_with_web_search_the_search_blocks_come_before_the_text():
    end = Ending("stop", USAGE, "", "News: roundup", searches=(SEARCH,))
    out = await _anthropic_stream(
        [lambda s: s.delta("", "News: roundup"), lambda s: s.finish(end)], search=True
    )
    events = _anthropic_events(out)
    assert _blocks_balanced(events) == ["server_tool_use", "web_search_tool_result", "text"]
    use = next(e["content_block"] for e in events if e["type"] == "content_block_start")
    result = [e["content_block"] for e in events if e["type"] == "content_block_start"][1]
    assert result["tool_use_id"] == use["id"] and use["id"].startswith("srvtoolu_")
    assert [r["url"] for r in result["content"]] == ["https://news.example.com/r"]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == "News: roundup"
    assert events[-2]["usage"]["server_tool_use"]["web_search_requests"] == 1


async def test_searched_lets_the_text_stream_right_after_the_blocks():
    out = await _anthropic_stream(
        [
            lambda s: s.searched((SEARCH,)),
            lambda s: s.delta("", "Now "),
            lambda s: s.finish(Ending("stop", content="Now ", searches=(SEARCH,))),
        ],
        search=True,
    )
    events = _anthropic_events(out)
    assert _blocks_balanced(events) == ["server_tool_use", "web_search_tool_result", "text"]


async def test_an_anthropic_failure_midway_is_an_error_event_typed_by_status():
    err = GatewayError("rate_limited", "busy")
    out = await _anthropic_stream([lambda s: s.delta("", "Hi"), lambda s: s.fail(err)])
    last = _anthropic_events(out)[-1]
    assert last == {"type": "error", "error": {"type": "rate_limit_error", "message": err.message}}


@pytest.mark.parametrize(
    ("kind", "type_"),
    [
        ("invalid_request", "invalid_request_error"),
        ("invalid_api_key", "authentication_error"),
        ("model_forbidden", "permission_error"),
        ("model_not_found", "not_found_error"),
        ("payload_too_large", "request_too_large"),
        ("rate_limited", "rate_limit_error"),
        ("captcha_required", "overloaded_error"),
        ("unavailable", "api_error"),
    ],
)
def test_an_anthropic_error_body_takes_its_type_from_the_status(kind: str, type_: str):
    body = json.loads(anthropic_error_body(GatewayError(kind, "d")))
    assert body["type"] == "error" and body["error"]["type"] == type_


async def test_an_anthropic_result_is_one_message_with_blocks_in_order():
    out = Out()
    sink = AnthropicResult(out, "msg_2", "claude-sonnet-4-5", search=True)
    await sink.tool_call(CALL)
    await sink.finish(Ending("tool_calls", USAGE, "plan", "Looking.", searches=(SEARCH,)))
    message = Message.model_validate_json(out.body)
    assert [b.type for b in message.content] == [
        "thinking",
        "server_tool_use",
        "web_search_tool_result",
        "text",
        "tool_use",
    ]
    assert message.content[-1].input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"
    assert message.usage.server_tool_use.web_search_requests == 1


async def test_no_ping_is_written_after_the_stream_ended():
    out = await _anthropic_stream([lambda s: s.finish(Ending("stop"))])
    after = len(out.body)
    await asyncio.sleep(0.05)
    assert len(out.body) == after
    assert _anthropic_events(out)[-1]["type"] == "message_stop"


# OpenAI Responses


def _head(store: bool = False) -> dict:
    return response_head(
        "resp_1",
        "GLM-4.7",
        instructions=None,
        max_output_tokens=None,
        parallel_tool_calls=True,
        reasoning={"effort": None, "summary": None},
        temperature=None,
        top_p=None,
        text_format={"type": "text"},
        tool_choice="auto",
        tools=[],
        user=None,
        metadata={},
        store=store,
    )


def _event_types(union: object) -> dict[str, type]:
    """The SDK's event class for each ``type`` (its union is too wide to read errors from)."""
    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    found = {}
    for cls in typing.get_args(union):
        literal = typing.get_args(cls.model_fields["type"].annotation)
        if literal:
            found[literal[0]] = cls
    return found


_RESPONSE_EVENTS = _event_types(ResponseStreamEvent)


def _responses_events(out: Out) -> list[dict]:
    events = []
    for name, data in out.sse():
        value = json.loads(data)
        assert value["type"] == name
        if name != "response.failed":  # the SDK's error codes are OpenAI's, not ours
            _RESPONSE_EVENTS[name].model_validate_json(data)
        events.append(value)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


async def _responses_stream(steps, **kw) -> Out:
    out = Out()
    sink = ResponsesStream(out, _head(), **kw)
    for step in steps:
        await step(sink)
    return out


async def test_a_responses_stream_is_created_items_then_completed():
    end = Ending("stop", USAGE, "think", "Hello")
    out = await _responses_stream(
        [
            lambda s: s.delta("think", ""),
            lambda s: s.delta("", "Hel"),
            lambda s: s.delta("", "lo"),
            lambda s: s.finish(end),
        ]
    )
    events = _responses_events(out)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.completed"
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "Hello"
    assert final.usage.input_tokens_details.cached_tokens == 1536
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Hello"
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1]


@pytest.mark.parametrize(
    ("reason", "status", "why"),
    [
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
    ],
)
async def test_each_finish_reason_is_its_response_status(reason: str, status: str, why):
    out = await _responses_stream([lambda s: s.finish(Ending(reason, content="x"))])
    last = _responses_events(out)[-1]
    assert last["type"] == (
        "response.completed" if status == "completed" else "response.incomplete"
    )
    response = Response.model_validate(last["response"])
    assert response.status == status
    assert (response.incomplete_details.reason if response.incomplete_details else None) == why


async def test_an_empty_answer_is_still_one_empty_message():
    out = await _responses_stream([lambda s: s.finish(Ending("stop"))])
    response = Response.model_validate(_responses_events(out)[-1]["response"])
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == ""


async def test_a_function_call_is_an_item_with_its_arguments():
    offered = {"get_weather": Offered("function", "get_weather")}
    out = await _responses_stream(
        [lambda s: s.tool_call(CALL), lambda s: s.finish(Ending("tool_calls"))], offered=offered
    )
    response = Response.model_validate(_responses_events(out)[-1]["response"])
    [item] = response.output
    assert (item.type, item.name, item.call_id) == ("function_call", "get_weather", CALL.id)
    assert json.loads(item.arguments) == {"city": "Paris"}


async def test_a_web_search_is_an_item_before_the_message():
    out = await _responses_stream(
        [
            lambda s: s.delta("", "News"),
            lambda s: s.finish(Ending("stop", content="News", searches=(SEARCH,))),
        ],
        search=True,
    )
    events = _responses_events(out)
    response = Response.model_validate(events[-1]["response"])
    assert [item.type for item in response.output] == ["web_search_call", "message"]
    assert response.output[0].action.query == SEARCH.query
    assert response.output_text == "News"


async def test_a_responses_failure_midway_is_an_error_then_response_failed():
    err = GatewayError("stalled", "no byte for 60 s")
    out = await _responses_stream([lambda s: s.delta("", "Hi"), lambda s: s.fail(err)])
    events = _responses_events(out)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "stalled"


async def test_a_stored_response_says_whether_keeping_it_worked():
    kept: list[dict] = []

    async def keep(response: dict) -> bool:
        kept.append(response)
        return False

    out = Out()
    await ResponsesResult(out, _head(store=True), keep=keep).finish(Ending("stop", content="x"))
    response = Response.model_validate_json(out.body)
    assert len(kept) == 1 and response.store is False


async def test_a_responses_result_hides_reasoning_when_asked():
    out = Out()
    sink = ResponsesResult(out, _head(), show_reasoning=False)
    await sink.finish(Ending("stop", USAGE, "private", "Hi"))
    response = Response.model_validate_json(out.body)
    assert [item.type for item in response.output] == ["message"]
    assert b"private" not in out.body
