"""Structured output emulated on neutral text: the schema goes into the prompt, the answer is
checked against it before the client sees it.

Owns ``schema_problem`` (a client's schema checked at the edge), ``instruction`` (the rule
written into the system prompt), ``extract`` (the JSON value in an answer: code fences and
prose around it removed, almost-JSON repaired as for tool calls), ``answer_problem`` (the
value validated with ``jsonschema``), ``StructuredSink`` (thinking passes through live, the
answer's text is held back until the end, then sent as the validated JSON, compact; for a
tool-forced format as the input of one call of that tool) and
``complete_structured``: one completion, and when its answer is not valid, one more with the
problem told to the model; if that fails too, a ``structured_output_invalid`` error (502,
naming the first problem), never the broken JSON with a normal finish. Answers cut short
(``length``, ``content_filter``) and tool calls are passed on unchecked, with their finish
reason, which the SDKs already treat as "no parsed output". ``jsonschema`` is imported on the
first structured request (it costs idle memory every other deployment would pay for nothing).
"""

import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

from server.core.chat import (
    Conversation,
    Ending,
    OutputFormat,
    Sink,
    ToolCall,
    Turn,
    WebSearch,
)
from server.core.errors import GatewayError
from server.emulation.tool_parse import loads_repaired, new_call_id

__all__ = [
    "StructuredSink",
    "answer_problem",
    "complete_structured",
    "extract",
    "instruction",
    "output_format",
    "schema_problem",
]

RETRIES = 1  # one more completion with the problem named; a third rarely does better
_FENCED = re.compile(r"```[\w-]*[ \t]*\n(.*?)\n?[ \t]*```", re.S)
_UNCHECKED = {"tool_calls", "length", "content_filter"}
_NOTHING = object()


def _validator(schema: dict[str, Any]) -> "Validator":
    from jsonschema.validators import validator_for

    return validator_for(schema)(schema)


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why a client's JSON Schema is not one (None when it is)."""
    from jsonschema.exceptions import SchemaError

    try:
        type(_validator(schema)).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    return None


def output_format(
    kind: str, name: str | None, schema: dict[str, Any] | None, param: str
) -> OutputFormat | None:
    """What a face's request asked for (``kind``: text, json_object or json_schema), its
    schema checked: a 400 naming ``param`` + ``.schema`` when it is not a JSON Schema."""
    if kind == "text":
        return None
    if kind == "json_schema" and schema is not None:
        problem = schema_problem(schema)
        if problem is not None:
            raise GatewayError(
                "invalid_request",
                f"{param}.schema is not a valid JSON Schema: {problem}",
                param=f"{param}.schema",
            )
        return OutputFormat(name or "", schema)
    return OutputFormat(name or "")  # json_object, or a json_schema without a schema


def instruction(fmt: OutputFormat) -> str:
    rule = (
        "Answer with exactly one JSON value and nothing else: no text before or after it, no"
        " markdown code fence."
    )
    if fmt.schema is None:
        return f"{rule} The value must be a JSON object."
    schema = msgspec.json.encode(fmt.schema).decode()
    named = f' (named "{fmt.name}")' if fmt.name else ""
    if fmt.tool:  # the value is a tool's input: say what the tool is for
        about = f": {fmt.description}" if fmt.description else ""
        rule = f"{rule} The value is the input of the tool `{fmt.tool}`{about}."
    return f"{rule} It must be valid against this JSON Schema{named}:\n{schema}"


def extract(text: str) -> object:
    """The JSON value in ``text``, or ``_NOTHING``: the whole text, a fenced block, or the
    span from the first bracket to the last one, each repaired when that is safe."""
    body = text.strip()
    candidates = [body, *(m.strip() for m in _FENCED.findall(body))]
    for opening, closing in (("{", "}"), ("[", "]")):
        start, end = body.find(opening), body.rfind(closing)
        if 0 <= start < end:
            candidates.append(body[start : end + 1])
    for candidate in candidates:
        if candidate in ("null",):
            return None
        value = loads_repaired(candidate)
        if value is not None:
            return value
    return _NOTHING


def answer_problem(value: object, fmt: OutputFormat) -> str | None:
    """What is wrong with the extracted value (None when it is valid)."""
    if value is _NOTHING:
        return "the answer holds no JSON value"
    if fmt.schema is None:
        return None if isinstance(value, dict) else "the answer is not a JSON object"
    from jsonschema.exceptions import best_match

    error = best_match(_validator(fmt.schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(step) for step in error.absolute_path)
    return f"at '/{where}': {error.message}" if where else error.message


class StructuredSink:
    """In front of the face's sink for one completion: holds the answer text, checks it."""

    def __init__(self, inner: Sink, fmt: OutputFormat) -> None:
        self.inner = inner
        self.fmt = fmt
        self.text: list[str] = []
        self.problem: str | None = None  # set when the answer was not valid (nothing sent)
        self.answer = ""

    def __repr__(self) -> str:
        return f"<StructuredSink held={sum(map(len, self.text))} problem={self.problem!r}>"

    @property
    def started(self) -> bool:
        return self.inner.started

    async def delta(self, reasoning: str, content: str) -> None:
        if content:
            self.text.append(content)
        if reasoning:
            await self.inner.delta(reasoning, "")

    async def tool_call(self, call: ToolCall) -> None:
        await self.inner.tool_call(call)

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        await self.inner.searched(searches)

    async def finish(self, end: Ending) -> None:
        text = end.content or "".join(self.text)
        if end.reason not in _UNCHECKED:
            value = extract(text)
            self.problem = answer_problem(value, self.fmt)
            if self.problem is not None:
                self.answer = text
                return  # complete_structured decides: another try, or the error
            text = msgspec.json.encode(value).decode()
            if self.fmt.tool:  # the valid value is the input of a call of that tool
                await self.inner.tool_call(ToolCall(new_call_id(), self.fmt.tool, text))
                await self.inner.finish(dataclasses.replace(end, reason="tool_calls", content=""))
                return
        if text:
            await self.inner.delta("", text)
        await self.inner.finish(dataclasses.replace(end, content=text))

    async def fail(self, error: GatewayError) -> None:
        await self.inner.fail(error)


def _with_instruction(conv: Conversation, fmt: OutputFormat) -> Conversation:
    turns = list(conv.turns)
    rule = instruction(fmt)
    if turns and turns[0].role == "system":
        turns[0] = dataclasses.replace(turns[0], text=f"{turns[0].text}\n\n{rule}")
    else:
        turns.insert(0, Turn("system", rule))
    return dataclasses.replace(conv, turns=turns, output_format=None)


def _with_repair(conv: Conversation, answer: str, problem: str) -> Conversation:
    retry = (
        f"That answer is not valid: {problem}. Reply again with only the corrected JSON value,"
        " following the schema, and nothing else."
    )
    turns = [*conv.turns, Turn("assistant", answer), Turn("user", retry)]
    return dataclasses.replace(conv, turns=turns)


async def complete_structured(
    conv: Conversation,
    sink: Sink,
    fmt: OutputFormat,
    run: Callable[[Conversation, Sink], Awaitable[None]],
) -> None:
    """``run`` (one completion, with its own upstream retries) until the answer is valid,
    at most ``RETRIES`` more times; then the error."""
    attempt = _with_instruction(conv, fmt)
    for tries_left in range(RETRIES, -1, -1):
        holder = StructuredSink(sink, fmt)
        await run(attempt, holder)
        if holder.problem is None:
            return  # answered (or failed, which the sink already reported)
        if tries_left:
            attempt = _with_repair(attempt, holder.answer, holder.problem)
    await sink.fail(
        GatewayError("structured_output_invalid", holder.problem or "", model=conv.model.id)
    )
