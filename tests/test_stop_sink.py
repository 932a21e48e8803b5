"""Stop sequences with tool emulation: they apply to the text the tool scanner lets through.

Drives the sinks one attempt uses (``answer_sink``) with the answer split at every point, and
records what the face's sink receives.
"""

import json

import pytest

from server.core.chat import Conversation, Ending, ToolCall, ToolSpec
from server.core.completion import answer_sink
from server.core.errors import GatewayError
from server.core.models import require_model
from server.emulation.stop_sink import StopSequenceReached

MODEL = require_model("glm-4.6")
ANSWER = 'Let me look. <tool_call>{"name": "search", "arguments": {"q": "bus stop"}}</tool_call>'


class Recorder:
    """The face's sink: what a client would see."""

    def __init__(self) -> None:
        self.started = False
        self.text = ""
        self.calls: list[tuple[str, dict]] = []
        self.end: tuple[str, str, str | None] | None = None

    async def delta(self, reasoning: str, content: str) -> None:
        self.started = True
        self.text += content

    async def tool_call(self, call: ToolCall) -> None:
        self.calls.append((call.name, json.loads(call.arguments)))

    async def finish(self, end: Ending) -> None:
        self.end = (end.reason, end.content, end.stop_sequence)

    async def fail(self, error: GatewayError) -> None:
        raise AssertionError(error)


async def run(answer: str, cuts: list[int], stop: list[str], tools: list[str]) -> Recorder:
    """Feed ``answer`` in pieces as ``_attempt`` does: a stop ends the reading."""
    conv = Conversation(MODEL, [], stop=stop, tools=[ToolSpec(name) for name in tools])
    face = Recorder()
    sink, prev = answer_sink(face, conv, 200_000), 0
    try:
        for cut in [*cuts, len(answer)]:
            await sink.delta("", answer[prev:cut])
            prev = cut
    except StopSequenceReached:
        pass
    await sink.finish(Ending("stop", None, "", answer))
    return face


@pytest.mark.parametrize("cut", range(len(ANSWER) + 1))
async def test_a_stop_inside_tool_arguments_does_not_cut_the_call(cut):
    face = await run(ANSWER, [cut], ["stop"], ["search"])
    assert face.calls == [("search", {"q": "bus stop"})]
    assert face.text == "Let me look."
    assert face.end == ("tool_calls", "Let me look.", None)


@pytest.mark.parametrize("cut", range(0, 60, 3))
async def test_a_stop_in_the_text_before_a_call_ends_the_answer_there(cut):
    answer = "Checking now. Done, stop here." + ANSWER
    face = await run(answer, [cut], ["stop"], ["search"])
    assert face.calls == []  # the call comes after the stop: never made
    assert face.text == "Checking now. Done, "
    assert face.end == ("stop_sequence", "Checking now. Done, ", "stop")


async def test_a_call_before_the_stop_is_made_and_keeps_tool_calls():
    answer = ANSWER + " Now I stop and wait. more"
    face = await run(answer, [20, 90], ["stop"], ["search"])
    assert face.calls == [("search", {"q": "bus stop"})]
    assert face.end is not None and face.end[0] == "tool_calls"
    assert "wait" not in face.text and "wait" not in face.end[1]


async def test_without_tools_a_stop_cuts_plain_text():
    face = await run("one two stop three", [10], ["stop"], [])
    assert face.text == "one two " and face.end == ("stop_sequence", "one two ", "stop")
