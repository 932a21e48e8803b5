"""OpenAI ``stop`` end to end: the official ``openai`` SDK against the gateway and the fake
upstream. The text ends before the first stop sequence with finish_reason ``stop``; a stop
sequence inside a tool call's arguments never cuts the call.
"""

import json

import pytest

from tests.test_tools_e2e import ASK, BASE, TOOLS, WEATHER, calls_of

FINAL = "It is 18 °C (64.4 °F) in Paris right now."  # the tools_final_answer cassette


async def ask(gw, stream: bool, **extra) -> tuple[str, list, str]:
    """(content, [(name, arguments)], finish_reason) as the client sees them."""
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, stream=stream, **extra
        )
        if not stream:
            choice = reply.choices[0]
            return (
                choice.message.content or "",
                calls_of(choice.message.tool_calls),
                choice.finish_reason,
            )
        chunks = [chunk async for chunk in reply]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls: dict[int, dict] = {}
    for delta in deltas:
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"name": part.function.name, "arguments": ""})
            call["arguments"] += part.function.arguments or ""
    text = "".join(d.content or "" for d in deltas)
    got = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
    return text, got, chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_cuts_the_text_before_the_sequence(gateway, stream):
    gw = await gateway(*BASE, "tools_final_answer")
    text, calls, finish = await ask(gw, stream, stop=["Paris", "never said"])
    assert (text, calls, finish) == ("It is 18 °C (64.4 °F) in ", [], "stop")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stop_that_never_appears_changes_nothing(gateway, stream):
    gw = await gateway(*BASE, "tools_final_answer")
    assert await ask(gw, stream, stop="never said") == (FINAL, [], "stop")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stop_inside_tool_arguments_does_not_cut_the_call(gateway, stream):
    gw = await gateway(*BASE, "tools_single")  # arguments {"city": "Paris", "unit": "celsius"}
    text, calls, finish = await ask(gw, stream, tools=TOOLS, stop=["celsius"])
    assert calls == [("get_weather", WEATHER)] and finish == "tool_calls"
    assert text.strip() == "I'll look up the current weather in Paris." and "<" not in text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stop_in_the_text_before_a_call_ends_the_answer_there(gateway, stream):
    gw = await gateway(*BASE, "tools_single")
    text, calls, finish = await ask(gw, stream, tools=TOOLS, stop=["weather"])
    assert (text.strip(), calls, finish) == ("I'll look up the current", [], "stop")
