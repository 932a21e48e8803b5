"""Function calling through the official ``openai`` SDK, emulated over the prompt.

Each case is a cassette whose upstream answer uses the gateway's protocol: the client must
get exact OpenAI ``tool_calls`` (streamed: index, id and name first, then arguments), the text
around them as content, and never the protocol's markup; a multi-step agent loop must work.
"""

import json

import msgspec
import openai
import pytest

BASE = ("home", "guest_auth")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string"},
                    "days": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time in a timezone",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_temperature",
            "description": "Celsius to Fahrenheit",
            "parameters": {"type": "object", "properties": {"celsius": {"type": "number"}}},
        },
    },
]
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
WEATHER = {"city": "Paris", "unit": "celsius"}

# cassette -> (content, [(name, arguments)])
CASES = {
    "tools_single": ("I'll look up the current weather in Paris.", [("get_weather", WEATHER)]),
    "tools_split_frames": (
        "I'll look up the current weather in Paris.",
        [("get_weather", WEATHER)],
    ),
    "tools_parallel": (
        "",
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})],
    ),
    "tools_mixed_text": (
        "Paris is the capital of France. Let me check the local time there.",
        [("get_time", {"timezone": "Europe/Paris"})],
    ),
    "tools_native_glm": ("", [("get_weather", {"city": "Paris", "days": 3})]),
    "tools_repairable": ("", [("get_weather", WEATHER)]),
}
AS_TEXT = {  # blocks that must come back as the text they were, not as invented calls
    "tools_beyond_repair": 'Checking now.\n<tool_call>\n{"name": "get_weather", "arguments": '
    '{"city": "Paris"\n</tool_call>',
    "tools_unknown_function": '<tool_call>\n{"name": "launch_rockets", "arguments": '
    '{"count": 3}}\n</tool_call>',
}


def calls_of(tool_calls) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in tool_calls or []]


@pytest.mark.parametrize("name", CASES)
async def test_tool_calls_non_stream(gateway, name):
    content, calls = CASES[name]
    gw = await gateway(*BASE, name)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.7", messages=ASK, tools=TOOLS)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert calls_of(message.tool_calls) == calls
    assert all(c.id.startswith("call_") and c.type == "function" for c in message.tool_calls)
    assert len({c.id for c in message.tool_calls}) == len(calls)
    assert (message.content or "") == content


@pytest.mark.parametrize("name", CASES)
async def test_tool_calls_stream(gateway, name):
    content, calls = CASES[name]
    gw = await gateway(*BASE, name)
    async with gw.openai() as client:
        stream = await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, tools=TOOLS, stream=True
        )
        chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    text = "".join(d.content or "" for d in deltas)
    assert text.strip() == content and "<" not in text
    got: dict[int, dict] = {}
    for delta in deltas:
        for part in delta.tool_calls or []:
            if part.index not in got:  # the first delta of a call has its id and name
                assert part.id.startswith("call_") and part.function.name
                got[part.index] = {"name": part.function.name, "arguments": ""}
            got[part.index]["arguments"] += part.function.arguments or ""
    assert [(g["name"], json.loads(g["arguments"])) for _, g in sorted(got.items())] == calls
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("name", AS_TEXT)
@pytest.mark.parametrize("stream", [False, True])
async def test_broken_or_unknown_calls_come_back_as_text(gateway, name, stream):
    gw = await gateway(*BASE, name)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, tools=TOOLS, stream=stream
        )
        if stream:
            chunks = [chunk async for chunk in reply]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
            assert reply.choices[0].message.tool_calls is None
    assert text.strip() == AS_TEXT[name] and finish == "stop"


async def test_parallel_tool_calls_false_keeps_one_call(gateway):
    gw = await gateway(*BASE, "tools_parallel")
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, tools=TOOLS, parallel_tool_calls=False
        )
    assert calls_of(reply.choices[0].message.tool_calls) == [("get_weather", {"city": "Paris"})]
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert "at most one call" in body["messages"][0]["content"]


async def test_a_three_step_agent_loop(gateway):
    gw = await gateway(*BASE, "tools_single", "tools_step2", "tools_final_answer")
    messages = [{"role": "system", "content": "You are terse."}, *ASK]
    results = {
        "get_weather": '{"temp_c": 18, "sky": "clear"}',
        "convert_temperature": '{"fahrenheit": 64.4}',
    }
    async with gw.openai() as client:
        for _ in range(3):
            reply = await client.chat.completions.create(
                model="GLM-4.7", messages=messages, tools=TOOLS
            )
            message = reply.choices[0].message
            if not message.tool_calls:
                break
            messages.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls:
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call.id,
                        "content": results[call.function.name],
                    }
                )
    assert reply.choices[0].finish_reason == "stop"
    assert message.content == "It is 18 °C (64.4 °F) in Paris right now."
    bodies = [msgspec.json.decode(r.body) for r in gw.completions_seen()]
    assert len(bodies) == 3
    system = bodies[0]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You are terse.")
    assert '"name":"get_weather"' in system["content"] and "<tool_call>" in system["content"]
    last = bodies[2]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert (
        '"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}' in last[2]["content"]
    )
    first_call = messages[2]["tool_calls"][0]["id"]
    assert f'<tool_result name="get_weather" id="{first_call}">' in last[3]["content"]
    assert results["convert_temperature"] in last[5]["content"]
    assert bodies[2]["signature_prompt"] == last[5]["content"]


async def test_tool_choice_none_sends_no_tools(gateway):
    gw = await gateway(*BASE, "tools_final_answer")
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, tools=TOOLS, tool_choice="none"
        )
    assert reply.choices[0].finish_reason == "stop"
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert all("<tools>" not in m["content"] for m in body["messages"])


@pytest.mark.parametrize(
    ("choice", "rule"),
    [
        ("required", "You must call at least one function"),
        (
            {"type": "function", "function": {"name": "get_time"}},
            "You must call the function `get_time`",
        ),
    ],
)
async def test_tool_choice_rules_reach_the_prompt(gateway, choice, rule):
    gw = await gateway(*BASE, "tools_single")
    async with gw.openai() as client:
        await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, tools=TOOLS, tool_choice=choice
        )
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert rule in body["messages"][0]["content"]


async def test_named_tool_choice_must_be_a_given_tool(gateway):
    gw = await gateway(*BASE, "tools_single")
    async with gw.openai() as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="GLM-4.7",
                messages=ASK,
                tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "nope"}},
            )
    assert info.value.body["param"] == "tool_choice"


@pytest.mark.parametrize("stream", [False, True])
async def test_legacy_functions(gateway, stream):
    gw = await gateway(*BASE, "tools_single")
    functions = [t["function"] for t in TOOLS]
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.7",
            messages=ASK,
            functions=functions,
            function_call="auto",
            stream=stream,
        )
        if stream:
            chunks = [c async for c in reply]
            parts = [
                c.choices[0].delta.function_call
                for c in chunks
                if c.choices and c.choices[0].delta.function_call
            ]
            name = parts[0].name
            arguments = "".join(p.arguments or "" for p in parts)
            finish = chunks[-1].choices[0].finish_reason
        else:
            call = reply.choices[0].message.function_call
            name, arguments = call.name, call.arguments
            finish = reply.choices[0].finish_reason
    assert (name, json.loads(arguments), finish) == ("get_weather", WEATHER, "function_call")


async def test_tool_support_off_ignores_tools_and_says_so(gateway):
    gw = await gateway(*BASE, "tools_final_answer", tool_support=False)
    async with gw.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="GLM-4.7", messages=ASK, tools=TOOLS
        )
    assert raw.headers["X-Gateway-Tools"] == "ignored (TOOL_SUPPORT=false)"
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert all("<tools>" not in m["content"] for m in body["messages"])


async def test_scan_limit_bounds_what_is_held_back(gateway):
    # one character per frame, paced: the block is still open when 20 characters are held
    gw = await gateway(*BASE, "tools_split_frames", scan_limit=20, pace=0.001)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.7", messages=ASK, tools=TOOLS)
    assert reply.choices[0].message.tool_calls is None
    assert "<tool_call>" in reply.choices[0].message.content
