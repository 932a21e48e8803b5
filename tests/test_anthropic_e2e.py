"""The Anthropic Messages API with the official ``anthropic`` SDK, over the cassette upstream.

Plain and thinking answers, a tool_use -> tool_result -> answer round trip, stream and not,
the exact event sequence, stop sequences, count_tokens and Anthropic-shaped errors.
"""

import asyncio
import re

import anthropic
import msgspec
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import API_KEY
from tests.recorded import expected

BASE = ("home", "guest_auth")
HI = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.mark.parametrize("name", ["stream_glm5_plain_thinking", "stream_glm46_details_thinking"])
async def test_thinking_and_text_non_stream(gateway, name):
    gw = await gateway(*BASE, name)
    want = expected(name)
    async with gw.anthropic() as client:
        message = await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=1024,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-sonnet-5-5" and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == want["reasoning_content"]
    assert message.content[0].signature
    assert message.content[1].text == want["content"]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == want["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == want["usage"]["completion_tokens"]
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["features"]["enable_thinking"] is True
    assert body["model"] == "glm-4.7"  # claude-sonnet-* -> CLAUDE_SONNET_MODEL (GLM-4.7)


async def test_stream_event_sequence(gateway):
    name = "stream_glm5_plain_thinking"
    gw = await gateway(*BASE, name, split="random", pace=0.0005)
    want = expected(name)
    async with gw.anthropic() as client:
        stream = await client.messages.create(
            model="claude-opus-5-5",
            max_tokens=1024,
            messages=HI,
            stream=True,
            system=[{"type": "text", "text": "Be kind."}],
        )
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    blocks = [e for e in events if e.type == "content_block_start"]
    assert [b.content_block.type for b in blocks] == ["thinking", "text"]
    assert [b.index for b in blocks] == [0, 1]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert stops == [0, 1]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    thinking = "".join(d.thinking for d in deltas if d.type == "thinking_delta")
    text = "".join(d.text for d in deltas if d.type == "text_delta")
    assert (thinking, text) == (want["reasoning_content"], want["content"])
    assert [d.type for d in deltas].count("signature_delta") == 1
    final = events[-2]
    assert final.delta.stop_reason == "end_turn"
    assert final.usage.output_tokens == want["usage"]["completion_tokens"]
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["model"] == "glm-4.7" and body["features"]["enable_thinking"] is True
    assert body["messages"][0] == {"role": "system", "content": "Be kind."}


async def test_sdk_stream_helper_accumulates_the_message(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    client = gw.anthropic()
    async with (
        client,
        client.messages.stream(model="claude-haiku-5-5", max_tokens=100, messages=HI) as stream,
    ):
        text = "".join([t async for t in stream.text_stream])
        message = await stream.get_final_message()
    assert text == expected("stream_glm5_plain_thinking")["content"]
    assert message.content[-1].text == text
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["model"] == "0727-106B-API"  # claude-haiku-* -> GLM-4.5-Air


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_use_round_trip(gateway, stream):
    gw = await gateway(*BASE, "tools_single", "tools_final_answer")
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    async with gw.anthropic() as client:
        if stream:
            async with client.messages.stream(
                model="claude-sonnet-5-5", max_tokens=500, messages=messages, tools=[WEATHER_TOOL]
            ) as s:
                first = await s.get_final_message()
        else:
            first = await client.messages.create(
                model="claude-sonnet-5-5", max_tokens=500, messages=messages, tools=[WEATHER_TOOL]
            )
        assert first.stop_reason == "tool_use"
        text, call = first.content[-2], first.content[-1]
        assert text.type == "text" and text.text == "I'll look up the current weather in Paris."
        assert call.type == "tool_use" and call.id.startswith("toolu_")
        assert (call.name, call.input) == ("get_weather", {"city": "Paris", "unit": "celsius"})
        messages += [
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, clear"}
                ],
            },
        ]
        final = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=500, messages=messages, tools=[WEATHER_TOOL]
        )
    assert final.stop_reason == "end_turn"
    assert final.content[-1].text == "It is 18 °C (64.4 °F) in Paris right now."
    second = msgspec.json.decode(gw.completions_seen()[1].body)["messages"]
    assert f'<tool_result name="get_weather" id="{call.id}">\n18 C, clear' in second[-1]["content"]
    assert '"name":"get_weather"' in second[0]["content"]


async def test_tool_choice_any_and_none(gateway):
    gw = await gateway(*BASE, "tools_single")
    async with gw.anthropic() as client:
        await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=50,
            messages=HI,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "any"},
        )
        await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=50,
            messages=HI,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "none"},
        )
    first, second = (msgspec.json.decode(r.body) for r in gw.completions_seen())
    assert "You must call at least one function" in first["messages"][0]["content"]
    assert all("<tools>" not in m["content"] for m in second["messages"])


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_sequences(gateway, stream):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    async with gw.anthropic() as client:
        if stream:
            async with client.messages.stream(
                model="claude-sonnet-5-5",
                max_tokens=50,
                messages=HI,
                stop_sequences=["language model"],
            ) as s:
                message = await s.get_final_message()
        else:
            message = await client.messages.create(
                model="claude-sonnet-5-5",
                max_tokens=50,
                messages=HI,
                stop_sequences=["language model"],
            )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "language model"
    assert message.content[-1].text == "Hi there! I'm GLM, a large "  # up to the sequence


async def test_count_tokens_is_an_honest_estimate(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    async with gw.anthropic() as client:
        small = await client.messages.count_tokens(model="claude-sonnet-5-5", messages=HI)
        words = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 50}]
        big = await client.messages.count_tokens(model="claude-sonnet-5-5", messages=words)
        tools = await client.messages.count_tokens(
            model="claude-sonnet-5-5", messages=words, tools=[WEATHER_TOOL]
        )
    assert 1 <= small.input_tokens < 20
    assert 450 <= big.input_tokens <= 520  # 450 common words: about one token each
    assert tools.input_tokens > big.input_tokens + 100  # the tool protocol is counted too
    assert gw.completions_seen() == []


async def test_errors_are_anthropic_shaped(gateway):
    gw = await gateway(*BASE, "error_inband_model_403")
    async with gw.anthropic("sk-wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as info:
            await client.messages.create(model="claude-sonnet-5-5", max_tokens=5, messages=HI)
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "authentication_error"
    async with gw.anthropic() as client:
        with pytest.raises(anthropic.NotFoundError) as info:
            await client.messages.create(model="gpt-4o", max_tokens=5, messages=HI)
        assert info.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.PermissionDeniedError) as info:
            await client.messages.create(model="GLM-5.1", max_tokens=5, messages=HI)
        assert "user token" in info.value.body["error"]["message"]
    reply = await AsyncHTTPClient().fetch(
        gw.url + "/v1/messages",
        method="POST",
        raise_error=False,
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        body=b'{"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "x"}]}',
    )
    error = msgspec.json.decode(reply.body)
    assert reply.code == 400 and error["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in error["error"]["message"]
    image = (
        b'{"model": "claude-sonnet-5-5", "max_tokens": 5, "messages": [{"role": "user", '
        b'"content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]}'
    )
    reply = await AsyncHTTPClient().fetch(
        gw.url + "/v1/messages",
        method="POST",
        raise_error=False,
        headers={"x-api-key": API_KEY},
        body=image,
    )
    assert reply.code == 400 and b"messages.0.content.0" in reply.body


async def test_failure_midway_is_an_error_event(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking", cut_after=10)
    async with gw.anthropic() as client:
        stream = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=50, messages=HI, stream=True
        )
        with pytest.raises(anthropic.APIStatusError) as info:
            async for _ in stream:
                pass
    assert "closed" in str(info.value)


async def test_pings_fill_upstream_silences_and_stop_with_the_message(gateway, monkeypatch):
    from server.faces.anthropic import render as anthropic_render

    monkeypatch.setattr(anthropic_render, "PING_EVERY", 0.05)
    gw = await gateway(*BASE, "stream_glm5_plain_thinking", pace=0.02, stall_after=5)
    gw.fake.stall_after = 5  # silent for a while after 5 frames ...

    async def resume() -> None:
        await asyncio.sleep(0.4)
        gw.fake.stall_after = None  # ... then the rest

    body = (
        b'{"model": "claude-sonnet-5-5", "max_tokens": 50, "stream": true, '
        b'"messages": [{"role": "user", "content": "hi"}]}'
    )
    resumed = asyncio.ensure_future(resume())
    reply = await AsyncHTTPClient().fetch(
        gw.url + "/v1/messages",
        method="POST",
        body=body,
        headers={"x-api-key": API_KEY},
        request_timeout=20,
    )
    await resumed
    events = re.findall(rb"event: (\w+)", reply.body)
    first_delta = events.index(b"content_block_delta")
    assert events.count(b"ping") >= 4 and b"ping" in events[first_delta:]
    assert events[-1] == b"message_stop"
    ended = len(gw.services.active)
    await asyncio.sleep(0.3)  # no ping may follow the end (it would fail to write)
    pingers = [
        t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "AnthropicStream._ping"
    ]
    assert ended == 0 and not pingers
