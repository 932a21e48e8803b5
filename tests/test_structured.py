"""Structured output end to end with the official ``openai`` SDK: ``response_format``
(Chat Completions, ``chat.completions.parse``) and ``text.format`` (Responses,
``responses.parse``).

The schema must reach the model in the system prompt; the answer the client gets is the
validated JSON alone (a fenced block with prose around it is extracted, almost-JSON
repaired), streamed or not; an answer that breaks the schema is retried once with the
problem named to the model, and a second broken answer is a 502 ``structured_output_invalid``
(an error event when streaming), never broken JSON with ``finish_reason: stop``. An invalid
schema is a 400 naming the field. The extraction and validation are also checked directly.
"""

import json

import msgspec
import openai
import pytest
from pydantic import BaseModel

from scripts.structured_cassettes import VALID
from server.core.chat import OutputFormat
from server.emulation.structured import answer_problem, extract, schema_problem

BASE = ("home", "guest_auth")
ASK = [{"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}]
EVENT = json.loads(VALID)


class Event(BaseModel):
    name: str
    date: str
    participants: list[str]


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "date": {"type": "string"},
        "participants": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "date", "participants"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "event", "schema": SCHEMA, "strict": True},
}


def sent(gw) -> list[list[dict]]:
    return [msgspec.json.decode(seen.body)["messages"] for seen in gw.completions_seen()]


@pytest.mark.parametrize("name", ["structured_fenced", "structured_repairable"])
async def test_parse_gets_the_object(gateway, name):
    gw = await gateway(*BASE, name)
    async with gw.openai() as client:
        reply = await client.chat.completions.parse(
            model="GLM-4.7", messages=ASK, response_format=Event
        )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop"
    assert message.parsed == Event(**EVENT)
    assert json.loads(message.content) == EVENT  # the JSON alone, no fence, no prose
    (messages,) = sent(gw)
    system = messages[0]
    assert (
        system["role"] == "system"
        and '"required":["name","date","participants"]' in (system["content"])
    )
    assert 'named "Event"' in system["content"]


async def test_stream_sends_only_the_validated_json(gateway):
    gw = await gateway(*BASE, "structured_fenced")
    async with gw.openai() as client:
        stream = await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, response_format=RESPONSE_FORMAT, stream=True
        )
        chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    assert json.loads(content) == EVENT and "```" not in content
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_json_object_mode(gateway):
    gw = await gateway(*BASE, "structured_fenced")
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.7", messages=ASK, response_format={"type": "json_object"}
        )
    assert json.loads(reply.choices[0].message.content) == EVENT
    assert "must be a JSON object" in sent(gw)[0][0]["content"]


async def test_invalid_answer_is_retried_once_with_the_problem(gateway):
    gw = await gateway(*BASE, "structured_retry")
    async with gw.openai() as client:
        reply = await client.chat.completions.parse(
            model="GLM-4.7", messages=ASK, response_format=Event
        )
    assert reply.choices[0].message.parsed == Event(**EVENT)
    first, second = sent(gw)
    assert second[: len(first)] == first
    assert second[-2]["role"] == "assistant" and '"date"' not in second[-2]["content"]
    assert second[-1]["role"] == "user"
    assert "not valid: 'date' is a required property" in second[-1]["content"]


@pytest.mark.parametrize("stream", [False, True])
async def test_invalid_twice_is_an_error(gateway, stream):
    gw = await gateway(*BASE, "structured_invalid_twice")
    async with gw.openai() as client:
        with pytest.raises(openai.APIError) as caught:
            reply = await client.chat.completions.create(
                model="GLM-4.7", messages=ASK, response_format=RESPONSE_FORMAT, stream=stream
            )
            if stream:
                async for chunk in reply:
                    assert not (chunk.choices and chunk.choices[0].delta.content)
    error = caught.value
    assert error.code == "structured_output_invalid"
    assert "'date' is a required property" in error.message
    if not stream:
        assert error.status_code == 502
        assert error.response.headers["x-should-retry"] == "true"
    assert len(gw.completions_seen()) == 2


async def test_bad_schema_is_a_400(gateway):
    gw = await gateway(*BASE, "structured_fenced")
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}
    async with gw.openai() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="GLM-4.7", messages=ASK, response_format=bad)
        assert caught.value.body["param"] == "response_format.json_schema.schema"
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model="GLM-4.7",
                input="hi",
                text={"format": {"type": "json_schema", "name": "x", "schema": {"type": 12}}},
            )
        assert caught.value.body["param"] == "text.format.schema"
    assert gw.completions_seen() == []


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_text_format(gateway, stream):
    gw = await gateway(*BASE, "structured_retry")
    async with gw.openai() as client:
        if stream:
            async with client.responses.stream(
                model="GLM-4.7", input=ASK[0]["content"], text_format=Event
            ) as events:
                async for _ in events:
                    pass
                response = await events.get_final_response()
        else:
            response = await client.responses.parse(
                model="GLM-4.7", input=ASK[0]["content"], text_format=Event
            )
    assert response.output_parsed == Event(**EVENT)
    assert response.text.format.type == "json_schema" and response.text.format.name == "Event"
    assert len(gw.completions_seen()) == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (VALID, None),
        (f"Sure!\n```json\n{VALID}\n```", None),
        (f"The event is {VALID} as asked.", None),
        ('{"name": "x", "date": "y", "participants": "Alice"}', "at '/participants'"),
        ('{"name": "x", "date": "y", "participants": [], "extra": 1}', "'extra' was unexpected"),
        ("I cannot answer that.", "the answer holds no JSON value"),
        ('{"name": "x"', "the answer holds no JSON value"),
    ],
)
def test_extract_and_validate(text, problem):
    found = answer_problem(extract(text), OutputFormat("event", SCHEMA))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_schema_problem():
    assert schema_problem(SCHEMA) is None
    assert "is not valid under any of the given schemas" in schema_problem({"type": 12})
