"""The Responses API face end to end with the official ``openai`` SDK (``client.responses``).

Gateway and cassette upstream on real sockets. Streamed and not, the client must get the
capture's thinking as a ``reasoning`` item (one summary part) and its answer as a
``message`` item, with usage; a function tool round trip (``function_call`` out,
``function_call_output`` back in) must reach the upstream in the tool protocol; the event
sequence must be the one the SDKs and Codex parse (numbered, items opened and closed in order);
what the gateway does not do (``conversation``, ``background``) is a 400 naming the field;
a stream that fails midway ends with ``error`` + ``response.failed``.
"""

import json

import msgspec
import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import API_KEY
from tests.recorded import expected

BASE = ("home", "guest_auth")
PLAIN = "stream_glm5_plain_thinking"
MODEL = "GLM-5.3-Flash-Thinking"
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
    {
        "type": "function",
        "name": "convert_temperature",
        "description": "Celsius to Fahrenheit",
        "parameters": {"type": "object", "properties": {"celsius": {"type": "number"}}},
    },
]
ASK = "What's the weather in Paris?"
WEATHER = {"city": "Paris", "unit": "celsius"}


def _texts(response) -> tuple[str, str]:
    """(thinking, answer) of a Response, from its items."""
    thinking = "".join(
        part.text for item in response.output if item.type == "reasoning" for part in item.summary
    )
    return thinking, response.output_text


async def test_non_stream_plain(gateway):
    gw = await gateway(*BASE, PLAIN)
    want = expected(PLAIN)
    async with gw.openai() as client:
        response = await client.responses.create(
            model=MODEL, input="hello there", instructions="Be kind.", max_output_tokens=500
        )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == MODEL
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert _texts(response) == (want["reasoning_content"], want["content"])
    message = response.output[1]
    assert message.role == "assistant" and message.status == "completed"
    usage = want["usage"]
    assert response.usage.input_tokens == usage["prompt_tokens"]
    assert response.usage.output_tokens == usage["completion_tokens"]
    assert response.usage.total_tokens == usage["total_tokens"]
    assert response.instructions == "Be kind." and response.max_output_tokens == 500
    (sent,) = [msgspec.json.decode(seen.body) for seen in gw.completions_seen()]
    assert sent["messages"][0] == {"role": "system", "content": "Be kind."}
    assert sent["messages"][-1] == {"role": "user", "content": "hello there"}
    assert sent["params"]["max_tokens"] == 500


@pytest.mark.parametrize("split", ["event", "random"])
async def test_stream_plain_event_sequence(gateway, split):
    gw = await gateway(*BASE, PLAIN, split=split, pace=0.0005 if split == "random" else 0)
    want = expected(PLAIN)
    async with gw.openai() as client:
        stream = await client.responses.create(
            model=MODEL,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
            stream=True,
        )
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    reasoning_at = kinds.index("response.reasoning_summary_text.delta")
    text_at = kinds.index("response.output_text.delta")
    assert reasoning_at < text_at
    # each item is opened, filled and closed before the next begins
    outline = [k for k in kinds if not k.endswith(".delta")]
    assert outline == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    thinking = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert (thinking, answer) == (want["reasoning_content"], want["content"])
    done = events[-1].response
    assert _texts(done) == (thinking, answer)
    assert done.usage.total_tokens == want["usage"]["total_tokens"]
    ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert ids == {item.id for item in done.output}


async def test_stream_helper_accumulates(gateway):
    """``client.responses.stream`` (the SDK's own accumulator) rebuilds the same response."""
    gw = await gateway(*BASE, PLAIN)
    want = expected(PLAIN)
    async with (
        gw.openai() as client,
        client.responses.stream(model=MODEL, input="hello there") as stream,
    ):
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert _texts(final) == (want["reasoning_content"], want["content"])


async def test_reasoning_effort_none_drops_the_thinking(gateway):
    gw = await gateway(*BASE, PLAIN)
    async with gw.openai() as client:
        response = await client.responses.create(
            model=MODEL, input="hello there", reasoning={"effort": "none"}
        )
    assert [item.type for item in response.output] == ["message"]
    (sent,) = [msgspec.json.decode(seen.body) for seen in gw.completions_seen()]
    assert sent["features"]["enable_thinking"] is False


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_round_trip(gateway, stream):
    gw = await gateway(*BASE, "tools_single", "tools_step2")
    history: list = [{"role": "user", "content": ASK}]
    async with gw.openai() as client:
        if stream:
            async with client.responses.stream(
                model="GLM-4.7", input=history, tools=TOOLS
            ) as events:
                kinds = [event.type async for event in events]
                first = await events.get_final_response()
            assert "response.function_call_arguments.delta" in kinds
            assert "response.function_call_arguments.done" in kinds
        else:
            first = await client.responses.create(model="GLM-4.7", input=history, tools=TOOLS)
        calls = [item for item in first.output if item.type == "function_call"]
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", WEATHER)]
        assert calls[0].call_id.startswith("call_") and calls[0].id.startswith("fc_")
        assert first.output_text == "I'll look up the current weather in Paris."
        assert first.status == "completed"
        history += [item.model_dump(exclude_none=True) for item in first.output]
        history.append(
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": '{"temp_c": 18, "sky": "clear"}',
            }
        )
        second = await client.responses.create(model="GLM-4.7", input=history, tools=TOOLS)
    step2 = [item for item in second.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in step2] == [
        ("convert_temperature", {"celsius": 18})
    ]
    one, two = [msgspec.json.decode(seen.body)["messages"] for seen in gw.completions_seen()]
    assert "<tools>" in one[0]["content"] and '"name":"get_weather"' in one[0]["content"]
    assert [m["role"] for m in two] == ["system", "user", "assistant", "user"]
    assert '"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}' in two[2]["content"]
    result = f'<tool_result name="get_weather" id="{calls[0].call_id}">'
    assert result in two[3]["content"] and '"temp_c": 18' in two[3]["content"]


PATCH = "*** Begin Patch\n*** Add File: hi.txt\n+hello\n*** End Patch\n"
CUSTOM = {  # Codex's apply_patch, a free-form tool with a grammar
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch",
    "format": {
        "type": "grammar",
        "syntax": "lark",
        "definition": 'start: "*** Begin Patch" LF body "*** End Patch" LF?',
    },
}
NAMESPACE = {  # a group of tools, as an MCP server's are
    "type": "namespace",
    "name": "crm",
    "description": "Customer records",
    "tools": [
        {
            "type": "function",
            "name": "find_customer",
            "description": "Look a customer up by email",
            "parameters": {"type": "object", "properties": {"email": {"type": "string"}}},
        }
    ],
}


def _calling(name: str, arguments: dict) -> bytes:
    """An upstream answer that calls ``name`` in the gateway's tool protocol, in small deltas."""
    text = "Doing it.\n<tool_call>\n" + json.dumps({"name": name, "arguments": arguments})
    text += "\n</tool_call>"
    frames = [
        {"type": "chat:completion", "data": {"delta_content": text[i : i + 7], "phase": "answer"}}
        for i in range(0, len(text), 7)
    ]
    frames.append({"type": "chat:completion", "data": {"phase": "done", "done": True}})
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)


async def _respond(client, stream: bool, **body):
    if not stream:
        return await client.responses.create(**body), []
    async with client.responses.stream(**body) as events:
        kinds = [event.type async for event in events]
        return await events.get_final_response(), kinds


@pytest.mark.parametrize("stream", [False, True])
async def test_custom_and_namespace_tools_round_trip(gateway, stream):
    """A custom tool's call is a custom_tool_call with the free-form input; a namespaced
    function's call names its namespace; both outputs go back to the model as results."""
    gw = await gateway(*BASE, "tools_final_answer")
    gw.fake.answers += [
        _calling("apply_patch", {"input": PATCH}),
        _calling("crm.find_customer", {"email": "ada@example.com"}),
    ]
    tools = [CUSTOM, NAMESPACE]
    history: list = [{"role": "user", "content": "Add hi.txt, then find Ada."}]
    async with gw.openai() as client:
        first, kinds = await _respond(client, stream, model="GLM-4.7", input=history, tools=tools)
        (patch,) = [item for item in first.output if item.type == "custom_tool_call"]
        assert (patch.name, patch.input, patch.id[:4]) == ("apply_patch", PATCH, "ctc_")
        assert not [item for item in first.output if item.type == "function_call"]
        if stream:
            assert "response.custom_tool_call_input.delta" in kinds
            assert "response.custom_tool_call_input.done" in kinds
            assert "response.function_call_arguments.delta" not in kinds
        history += [item.model_dump(exclude_none=True) for item in first.output]
        history.append(
            {"type": "custom_tool_call_output", "call_id": patch.call_id, "output": "ok"}
        )
        second, _ = await _respond(client, stream, model="GLM-4.7", input=history, tools=tools)
        (find,) = [item for item in second.output if item.type == "function_call"]
        assert (find.namespace, find.name) == ("crm", "find_customer")
        assert json.loads(find.arguments) == {"email": "ada@example.com"}
        history += [item.model_dump(exclude_none=True) for item in second.output]
        history.append({"type": "function_call_output", "call_id": find.call_id, "output": "{}"})
        third, _ = await _respond(client, stream, model="GLM-4.7", input=history, tools=tools)
        assert third.output_text and third.status == "completed"
        assert [t.type for t in third.tools] == ["custom", "namespace"]  # echoed as given
    one, _, three = [msgspec.json.decode(seen.body)["messages"] for seen in gw.completions_seen()]
    system = one[0]["content"]
    assert '"name":"apply_patch"' in system and "lark grammar" in system
    assert '"name":"crm.find_customer"' in system and "(crm) Look a customer up" in system
    said = [m["content"] for m in three]
    assert any('"name":"apply_patch","arguments":{"input":"*** Begin Patch' in m for m in said)
    assert any(f'<tool_result name="apply_patch" id="{patch.call_id}">' in m for m in said)
    assert any(f'<tool_result name="crm.find_customer" id="{find.call_id}">' in m for m in said)


async def test_tool_choice_names_a_custom_tool(gateway):
    gw = await gateway(*BASE, "tools_final_answer")
    gw.fake.answers.append(_calling("apply_patch", {"input": PATCH}))
    async with gw.openai() as client:
        response = await client.responses.create(
            model="GLM-4.7",
            input="Add hi.txt",
            tools=[CUSTOM, *TOOLS],
            tool_choice={"type": "custom", "name": "apply_patch"},
        )
        assert (response.tool_choice.type, response.tool_choice.name) == ("custom", "apply_patch")
        assert [item.type for item in response.output][-1] == "custom_tool_call"
        with pytest.raises(openai.BadRequestError) as caught:  # a function is not a custom tool
            await client.responses.create(
                model="GLM-4.7",
                input="x",
                tools=[CUSTOM, *TOOLS],
                tool_choice={"type": "custom", "name": "get_weather"},
            )
        assert caught.value.body["param"] == "tool_choice"
    (sent,) = [msgspec.json.decode(seen.body) for seen in gw.completions_seen()]
    assert "You must call the function `apply_patch`" in sent["messages"][0]["content"]


async def test_tool_choice_named_and_refusals(gateway):
    gw = await gateway(*BASE, "tools_single")
    async with gw.openai() as client:
        response = await client.responses.create(
            model="GLM-4.7",
            input=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "name": "get_weather"},
        )
        assert response.tool_choice.name == "get_weather"
        cases = [
            ({"background": True}, "background"),
            ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
            ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
            ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, None),
        ]
        for extra, param in cases:
            body = {"model": "GLM-4.7", "input": ASK, "tools": TOOLS, **extra}
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(**body)
            error = caught.value.body
            assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
            if param:
                assert error["param"] == param, error
            assert caught.value.response.headers["x-should-retry"] == "false"
    (sent,) = [msgspec.json.decode(seen.body) for seen in gw.completions_seen()]
    assert "get_weather" in sent["messages"][0]["content"]


async def test_codex_builtin_tools_are_not_offered(gateway):
    """Codex always sends web_search and namespace tools: answered, not refused, and said."""
    gw = await gateway(*BASE, "tools_final_answer")
    body = {
        "model": "GLM-4.7",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ASK}]}
        ],
        "tools": [*TOOLS, {"type": "web_search", "external_web_access": False}],
        "stream": False,
    }
    response = await AsyncHTTPClient().fetch(
        gw.url + "/v1/responses",
        method="POST",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert response.headers["X-Gateway-Tools"] == "not offered: web_search"
    assert json.loads(response.body)["status"] == "completed"


async def test_unknown_model_and_bad_key(gateway):
    gw = await gateway(*BASE, PLAIN)
    async with gw.openai() as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="gpt-99", input="hi")
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.retrieve("resp_abc")
        assert "was not stored, was deleted, or expired" in caught.value.message
    async with gw.openai(api_key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.responses.create(model=MODEL, input="hi")


async def test_stream_cut_midway_ends_with_response_failed(gateway):
    gw = await gateway(*BASE, PLAIN, cut_after=20)
    async with gw.openai() as client:
        stream = await client.responses.create(model=MODEL, input="hello there", stream=True)
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "unavailable"
    assert events[-2].code == "unavailable" and events[-2].message
