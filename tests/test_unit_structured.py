"""Structured output's sink and retry loop driven directly (``server.emulation.structured``):
what the face's sink receives for a valid, a repairable, an invalid and a cut-short answer;
the instruction in the system turn; one retry that names the problem to the model; and a
``structured_output_invalid`` failure, never broken JSON with a normal finish."""

import json

import pytest

from server.core.chat import Conversation, Ending, OutputFormat, ToolCall, Turn, WebSearch
from server.core.errors import GatewayError
from server.core.models import STATIC
from server.emulation.structured import (
    RETRIES,
    StructuredSink,
    answer_problem,
    complete_structured,
    extract,
    instruction,
    output_format,
)

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "day": {"type": "string"}},
    "required": ["name", "day"],
}
FMT = OutputFormat("event", SCHEMA)
MODEL = STATIC.rows["glm-4.7"]


class Face:
    """The face's sink: what the client would see."""

    started = False

    def __init__(self) -> None:
        self.reasoning = ""
        self.text = ""
        self.calls: list[ToolCall] = []
        self.end: Ending | None = None
        self.error: GatewayError | None = None

    async def delta(self, reasoning: str, content: str) -> None:
        self.reasoning += reasoning
        self.text += content

    async def tool_call(self, call: ToolCall) -> None:
        self.calls.append(call)

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        return None

    async def finish(self, end: Ending) -> None:
        self.end = end

    async def fail(self, error: GatewayError) -> None:
        self.error = error


async def _answer(text: str, fmt: OutputFormat = FMT, reason: str = "stop") -> Face:
    face = Face()
    sink = StructuredSink(face, fmt)
    await sink.delta("thinking out loud", "")
    for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
        await sink.delta("", piece)
    await sink.finish(Ending(reason, None, "thinking out loud", text))
    return face


async def test_thinking_streams_live_and_the_answer_comes_whole_at_the_end():
    face = await _answer('{"name": "Science fair", "day": "Friday"}')
    assert face.reasoning == "thinking out loud"
    assert json.loads(face.text) == {"name": "Science fair", "day": "Friday"}
    assert face.end is not None and face.end.reason == "stop"
    assert face.end.content == face.text


async def test_a_fenced_answer_with_prose_is_sent_as_the_bare_compact_json():
    face = await _answer('Sure!\n```json\n{"name": "Fair", "day": "Fri",}\n```\nEnjoy.')
    assert face.text == '{"name":"Fair","day":"Fri"}'


async def test_an_invalid_answer_sends_nothing_and_keeps_the_problem():
    face = Face()
    sink = StructuredSink(face, FMT)
    await sink.finish(Ending("stop", content='{"name": "Fair"}'))
    assert face.text == "" and face.end is None
    assert sink.problem is not None and "day" in sink.problem
    assert sink.answer == '{"name": "Fair"}'


@pytest.mark.parametrize("reason", ["length", "content_filter"])
async def test_an_answer_cut_short_is_passed_on_unchecked_with_its_reason(reason: str):
    face = await _answer('{"name": "Fa', reason=reason)
    assert face.text == '{"name": "Fa' and face.end.reason == reason


async def test_a_tool_forced_format_is_answered_as_one_call_of_that_tool():
    fmt = OutputFormat("event", SCHEMA, tool="record_event")
    face = await _answer('{"name": "Fair", "day": "Fri"}', fmt)
    [call] = face.calls
    assert call.name == "record_event" and json.loads(call.arguments)["day"] == "Fri"
    assert face.text == "" and face.end.reason == "tool_calls" and face.end.content == ""


async def test_json_object_mode_takes_any_object_but_not_an_array():
    anything = OutputFormat()
    assert json.loads((await _answer('{"x": [1]}', anything)).text) == {"x": [1]}
    face = Face()
    sink = StructuredSink(face, anything)
    await sink.finish(Ending("stop", content="[1, 2]"))
    assert sink.problem == "the answer is not a JSON object"


def test_the_instruction_carries_the_schema_and_the_tools_purpose():
    text = instruction(OutputFormat("event", SCHEMA, tool="record", description="Log an event"))
    assert '"required":["name","day"]' in text and '(named "event")' in text
    assert "`record`: Log an event" in text
    assert "must be a JSON object" in instruction(OutputFormat())


def test_extract_reads_a_bare_null_and_finds_nothing_in_prose():
    assert extract("null") is None
    assert answer_problem(extract("I cannot do that."), FMT) == "the answer holds no JSON value"


@pytest.mark.parametrize(
    ("kind", "schema", "expected"),
    [
        ("text", None, None),
        ("json_object", None, OutputFormat("n")),
        ("json_schema", SCHEMA, OutputFormat("n", SCHEMA)),
    ],
)
def test_output_format_maps_each_kind(kind, schema, expected):
    assert output_format(kind, "n", schema, "response_format.json_schema") == expected


def test_an_invalid_schema_is_a_400_naming_the_schema_field():
    with pytest.raises(GatewayError) as caught:
        output_format("json_schema", "n", {"type": "nope"}, "text.format")
    assert caught.value.status == 400 and caught.value.param == "text.format.schema"


def _runner(answers: list[str]):
    """A stand-in for one completion: answers in turn, recording each conversation sent."""
    seen: list[Conversation] = []

    async def run(conv: Conversation, sink) -> None:
        seen.append(conv)
        await sink.finish(Ending("stop", content=answers[len(seen) - 1]))

    return run, seen


async def test_the_schema_is_put_into_the_callers_system_turn():
    run, seen = _runner(['{"name": "a", "day": "b"}'])
    conv = Conversation(MODEL, [Turn("system", "Be brief."), Turn("user", "go")], output_format=FMT)
    await complete_structured(conv, Face(), FMT, run)
    [sent] = seen
    assert sent.turns[0].text.startswith("Be brief.\n\n") and "JSON Schema" in sent.turns[0].text
    assert sent.output_format is None  # the instruction replaces it upstream


async def test_an_invalid_answer_is_asked_again_once_with_the_problem_named():
    face = Face()
    run, seen = _runner(['{"name": "a"}', '{"name": "a", "day": "b"}'])
    await complete_structured(Conversation(MODEL, [Turn("user", "go")]), face, FMT, run)
    assert len(seen) == 2
    assistant, user = seen[1].turns[-2:]
    assert (assistant.role, assistant.text) == ("assistant", '{"name": "a"}')
    assert user.role == "user" and "'day' is a required property" in user.text
    assert json.loads(face.text) == {"name": "a", "day": "b"} and face.error is None


async def test_invalid_every_time_is_a_structured_output_invalid_error():
    face = Face()
    run, seen = _runner(["no json here"] * (RETRIES + 1))
    await complete_structured(Conversation(MODEL, [Turn("user", "go")]), face, FMT, run)
    assert len(seen) == RETRIES + 1
    assert face.error is not None and face.error.kind == "structured_output_invalid"
    assert face.error.status == 502 and "no JSON value" in face.error.detail
    assert face.text == "" and face.end is None
