"""Stored responses (``store``, ``previous_response_id``, ``GET``/``DELETE
/v1/responses/{id}``) through the official ``openai`` SDK, on one gateway and across two
replicas sharing a real redis-server.

A response stored by one call is retrieved whole, and a call naming it as
``previous_response_id`` sends the model the earlier conversation (its input, the answer,
a tool call and its output) before the new input; ``store: false``, an unknown id, a deleted
one, an expired one (``RESPONSES_TTL``) and ``RESPONSES_TTL=0`` each behave as documented.
"""

import asyncio
import json

import msgspec
import openai
import pytest

from state.connection import connect
from tests.recorded import expected

BASE = ("home", "guest_auth")
PLAIN = "stream_glm5_plain_thinking"
MODEL = "GLM-5.3-Flash-Thinking"
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {
        "type": "function",
        "name": "convert_temperature",
        "description": "Celsius to Fahrenheit",
        "parameters": {"type": "object", "properties": {"celsius": {"type": "number"}}},
    },
]


def sent(gw) -> list[list[dict]]:
    return [msgspec.json.decode(seen.body)["messages"] for seen in gw.completions_seen()]


@pytest.mark.parametrize("stream", [False, True])
async def test_store_retrieve_continue_delete(gateway, stream):
    gw = await gateway(*BASE, PLAIN)
    answer = expected(PLAIN)["content"]
    async with gw.openai() as client:
        if stream:
            async with client.responses.stream(
                model=MODEL, input="hello there", instructions="Be kind."
            ) as events:
                async for _ in events:
                    pass
                first = await events.get_final_response()
        else:
            first = await client.responses.create(
                model=MODEL, input="hello there", instructions="Be kind."
            )
        assert first.store is True
        again = await client.responses.retrieve(first.id)
        assert again.id == first.id and again.output_text == answer == first.output_text
        second = await client.responses.create(
            model=MODEL, input="and who made you?", previous_response_id=first.id
        )
        assert second.previous_response_id == first.id
        await client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(model=MODEL, input="more", previous_response_id=first.id)
        assert caught.value.body["param"] == "previous_response_id"
        assert (await client.responses.retrieve(second.id)).id == second.id
    one, two = sent(gw)
    assert one[0] == {"role": "system", "content": "Be kind."}
    # the earlier turn, then the new input; the earlier instructions are not carried over
    assert [m["role"] for m in two] == ["user", "assistant", "user"]
    assert two[0]["content"] == "hello there" and two[1]["content"] == answer
    assert two[2]["content"] == "and who made you?"


async def test_a_tool_loop_by_previous_response_id(gateway):
    gw = await gateway(*BASE, "tools_single", "tools_step2")
    async with gw.openai() as client:
        first = await client.responses.create(
            model="GLM-4.7", input="What's the weather in Paris?", tools=TOOLS
        )
        (call,) = [item for item in first.output if item.type == "function_call"]
        second = await client.responses.create(
            model="GLM-4.7",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C"}],
            tools=TOOLS,
        )
    (step2,) = [item for item in second.output if item.type == "function_call"]
    assert (step2.name, json.loads(step2.arguments)) == ("convert_temperature", {"celsius": 18})
    _, two = sent(gw)
    assert [m["role"] for m in two] == ["system", "user", "assistant", "user"]
    assert '"name":"get_weather"' in two[2]["content"]
    assert f'<tool_result name="get_weather" id="{call.call_id}">' in two[3]["content"]


async def test_store_false_and_ttl(gateway):
    gw = await gateway(*BASE, PLAIN, responses_ttl=0.5)
    async with gw.openai() as client:
        kept = await client.responses.create(model=MODEL, input="hello there")
        unkept = await client.responses.create(model=MODEL, input="hello there", store=False)
        assert kept.store is True and unkept.store is False
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unkept.id)
        assert (await client.responses.retrieve(kept.id)).id == kept.id
        await asyncio.sleep(0.7)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.retrieve(kept.id)
        assert "expired (responses are kept 0.5 s)" in caught.value.message


async def test_ttl_zero_stores_nothing(gateway):
    gw = await gateway(*BASE, PLAIN, responses_ttl=0)
    async with gw.openai() as client:
        response = await client.responses.create(model=MODEL, input="hello there")
        assert response.store is False
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model=MODEL, input="more", previous_response_id=response.id
            )
        assert caught.value.body["param"] == "previous_response_id"
        assert "RESPONSES_TTL=0" in caught.value.message
    assert not await gw.services.redis.keys("*response:*")


async def test_two_replicas_share_stored_responses(gateway, real_redis_server):
    """Stored on one replica, continued, read and deleted on another (a real redis-server)."""
    redis = connect(real_redis_server.url, 2.0)
    await redis.flushall()
    await redis.aclose()
    shared = {"redis_url": real_redis_server.url, "redis_timeout": 2.0}
    one = await gateway(*BASE, PLAIN, **shared)
    two = await gateway(*BASE, PLAIN, **shared)
    async with one.openai() as a, two.openai() as b:
        first = await a.responses.create(model=MODEL, input="hello there")
        second = await b.responses.create(
            model=MODEL, input="and who made you?", previous_response_id=first.id
        )
        assert (await b.responses.retrieve(first.id)).output_text == first.output_text
        await b.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError):
            await a.responses.retrieve(second.id)
    (messages,) = sent(two)
    assert [m["content"] for m in messages[::2]] == ["hello there", "and who made you?"]
