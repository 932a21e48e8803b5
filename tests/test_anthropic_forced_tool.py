"""Anthropic tool-forced JSON: ``tool_choice: {"type": "tool", "name": X}`` is how Anthropic
clients ask for structured output (the "JSON mode" of Anthropic's own docs, instructor,
LangChain's ``with_structured_output``). The tool's ``input_schema`` goes to the model as a
structured-output rule (not the tool protocol), the answer is extracted and validated
(fences and prose removed, retried once when invalid) and comes back as ONE ``tool_use`` of
that tool with the validated input, stop reason ``tool_use``, streamed or not; a second
invalid answer is Anthropic's error, never broken input. Same cassettes as
tests/test_structured.py (glm-4.7 is what claude-sonnet-* maps to).
"""

import anthropic
import msgspec
import pytest

from tests.test_structured import ASK, EVENT, SCHEMA

BASE = ("home", "guest_auth")
RECORD = {
    "name": "record_event",
    "description": "Record an event the user mentions.",
    "input_schema": SCHEMA,
}
OTHER = {"name": "get_time", "description": "The time", "input_schema": {"type": "object"}}
FORCED = {"type": "tool", "name": "record_event"}


def systems(gw) -> list[str]:
    return [msgspec.json.decode(s.body)["messages"][0]["content"] for s in gw.completions_seen()]


@pytest.mark.parametrize("name", ["structured_fenced", "structured_repairable"])
async def test_forced_tool_answers_one_valid_tool_use(gateway, name):
    gw = await gateway(*BASE, name)
    async with gw.anthropic() as client:
        message = await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=1024,
            messages=ASK,
            tools=[OTHER, RECORD],
            tool_choice=FORCED,
        )
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("record_event", EVENT)]
    assert uses[0].id.startswith("toolu_")
    assert not [b for b in message.content if b.type == "text"]  # no prose, no fence
    (system,) = systems(gw)
    assert "input of the tool `record_event`: Record an event the user mentions." in system
    assert '"required":["name","date","participants"]' in system
    assert "<tools>" not in system and "get_time" not in system  # no tool protocol


async def test_forced_tool_streamed(gateway):
    gw = await gateway(*BASE, "structured_fenced")
    async with (
        gw.anthropic() as client,
        client.messages.stream(
            model="claude-sonnet-5-5",
            max_tokens=1024,
            messages=ASK,
            tools=[RECORD],
            tool_choice=FORCED,
        ) as stream,
    ):
        events = [event.type async for event in stream]
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "record_event" and use.input == EVENT
    assert "input_json" in events  # the input arrives as input_json_delta events


async def test_forced_tool_retries_once_then_answers(gateway):
    gw = await gateway(*BASE, "structured_retry")
    async with gw.anthropic() as client:
        message = await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=1024,
            messages=ASK,
            tools=[RECORD],
            tool_choice=FORCED,
        )
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.input == EVENT
    second = msgspec.json.decode(gw.completions_seen()[1].body)["messages"]
    assert "'date' is a required property" in second[-1]["content"]


async def test_forced_tool_invalid_twice_is_an_anthropic_error(gateway):
    gw = await gateway(*BASE, "structured_invalid_twice")
    async with gw.anthropic() as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(
                model="claude-sonnet-5-5",
                max_tokens=1024,
                messages=ASK,
                tools=[RECORD],
                tool_choice=FORCED,
            )
    assert info.value.status_code == 502
    assert info.value.body["type"] == "error"
    assert "'date' is a required property" in info.value.message
    assert len(gw.completions_seen()) == 2


async def test_forced_tool_with_a_bad_schema_is_a_400_naming_it(gateway):
    gw = await gateway(*BASE)
    bad = {**RECORD, "input_schema": {"type": "object", "properties": {"x": {"type": 5}}}}
    async with gw.anthropic() as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model="claude-sonnet-5-5",
                max_tokens=64,
                messages=ASK,
                tools=[OTHER, bad],
                tool_choice=FORCED,
            )
    assert "tools.1.input_schema" in info.value.message
    assert not gw.completions_seen()
