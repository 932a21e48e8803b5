"""Search and effort flags as today's upstream reads them (PROTOCOL.md section 6.6), end to end.

Through the official ``openai`` and ``anthropic`` SDKs against the fake upstream, which checks
each completion's ``features`` against its (synthesized) ``/api/models`` catalogue and answers
an in-band error where the real upstream misbehaves: ``reasoning_effort`` on a model whose
capabilities lack it, or a level other than high/max, or without thinking. So an answer that
arrives whole is itself a check, and the tests also read what was sent.
"""

import msgspec
import pytest
from tornado.httputil import HTTPHeaders

from tests.accounts import TOKENS
from tests.fake_upstream import Seen

OK = "stream_glm5_plain_thinking"
GUESTS = ("home", "guest_auth", OK)
USERS = ("home", "guest_auth_user_role", OK)
HI = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}


def features(gw) -> dict:
    (seen,) = gw.completions_seen()
    return msgspec.json.decode(seen.body)["features"]


async def pooled(gateway):
    return await gateway(*USERS, zai_tokens=",".join(TOKENS), anonymous_mode=False)


async def test_search_models_set_auto_web_search_not_web_search(gateway):
    gw = await gateway(*GUESTS)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.7-Search", messages=HI)
    assert reply.choices[0].message.content
    sent = features(gw)
    assert sent["auto_web_search"] is True and sent["web_search"] is False


async def test_plain_models_search_nothing(gateway):
    gw = await gateway(*GUESTS)
    async with gw.openai() as client:
        await client.chat.completions.create(model="GLM-4.7", messages=HI)
    sent = features(gw)
    assert sent["auto_web_search"] is False and sent["web_search"] is False


@pytest.mark.parametrize("stream", [False, True])
async def test_search_is_off_when_the_caller_sends_tools(gateway, stream):
    gw = await gateway(*GUESTS)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-5.3-Flash-Search", messages=HI, tools=[TOOL], stream=stream
        )
        if stream:
            [chunk async for chunk in reply]
    sent = features(gw)
    assert sent["auto_web_search"] is False and sent["web_search"] is False


async def test_search_is_off_with_anthropic_tools(gateway):
    gw = await gateway(*GUESTS)
    async with gw.anthropic() as client:
        await client.messages.create(
            model="GLM-4.7-Search",
            max_tokens=256,
            messages=HI,
            tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
        )
    assert features(gw)["auto_web_search"] is False


@pytest.mark.parametrize(
    ("effort", "level"), [("low", "high"), ("medium", "high"), ("high", "high"), ("xhigh", "max")]
)
async def test_openai_effort_on_a_model_that_takes_it(gateway, effort, level):
    gw = await pooled(gateway)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-5.3", messages=HI, reasoning_effort=effort
        )
    assert reply.choices[0].message.content  # the fake answered: it accepted the features
    sent = features(gw)
    assert sent["reasoning_effort"] == level and sent["enable_thinking"] is True


async def test_openai_effort_none_turns_thinking_off_and_sends_no_level(gateway):
    gw = await pooled(gateway)
    async with gw.openai() as client:
        await client.chat.completions.create(
            model="GLM-5.2-Thinking", messages=HI, reasoning_effort="none"
        )
    sent = features(gw)
    assert "reasoning_effort" not in sent and sent["enable_thinking"] is False


@pytest.mark.parametrize(("effort", "thinking"), [("high", True), ("minimal", False)])
async def test_openai_effort_elsewhere_only_switches_thinking(gateway, effort, thinking):
    gw = await gateway(*GUESTS)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.7", messages=HI, reasoning_effort=effort
        )
    assert reply.choices[0].message.content
    sent = features(gw)
    assert "reasoning_effort" not in sent and sent["enable_thinking"] is thinking


@pytest.mark.parametrize(("budget", "level"), [(4000, "high"), (10000, "high"), (31999, "max")])
async def test_anthropic_thinking_budget_picks_the_level(gateway, budget, level):
    gw = await pooled(gateway)
    async with gw.anthropic() as client:
        message = await client.messages.create(
            model="GLM-5.3",
            max_tokens=40000,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": budget},
        )
    assert [b.type for b in message.content] == ["thinking", "text"]
    sent = features(gw)
    assert sent["reasoning_effort"] == level and sent["enable_thinking"] is True


async def test_anthropic_output_effort_forces_thinking_where_the_model_takes_it(gateway):
    gw = await pooled(gateway)
    async with gw.anthropic() as client:
        await client.messages.create(
            model="GLM-5.3", max_tokens=256, messages=HI, output_config={"effort": "max"}
        )
    sent = features(gw)
    assert sent["reasoning_effort"] == "max" and sent["enable_thinking"] is True


async def test_anthropic_output_effort_elsewhere_leaves_thinking_alone(gateway):
    # Claude Code sends output_config.effort on every turn: it must not switch thinking on.
    gw = await gateway(*GUESTS)
    async with gw.anthropic() as client:
        await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=256, messages=HI, output_config={"effort": "high"}
        )
    sent = features(gw)
    assert "reasoning_effort" not in sent and sent["enable_thinking"] is False


async def test_anthropic_disabled_thinking_wins_over_effort(gateway):
    gw = await pooled(gateway)
    async with gw.anthropic() as client:
        message = await client.messages.create(
            model="GLM-5.3",
            max_tokens=256,
            messages=HI,
            thinking={"type": "disabled"},
            output_config={"effort": "max"},
        )
    assert [b.type for b in message.content] == ["text"]
    sent = features(gw)
    assert "reasoning_effort" not in sent and sent["enable_thinking"] is False


async def test_the_fake_refuses_effort_where_the_real_upstream_misbehaves(gateway):
    """The check the tests above lean on: the fake answers an effort sent to a model whose
    capabilities lack it with an in-band error, which reaches the client as a 502."""
    gw = await gateway(*GUESTS)
    for row in gw.fake.models:
        if row["id"] == "glm-4.7":
            row["info"]["meta"]["capabilities"]["reasoning_effort"] = False
    body = {"model": "glm-4.7", "features": {"enable_thinking": True, "reasoning_effort": "max"}}

    def sent(**changes) -> Seen:
        raw = msgspec.json.encode({**body, **changes})
        return Seen("POST", "/api/v2/chat/completions", {"token": "t"}, HTTPHeaders(), raw)

    refusal = gw.fake._feature_refusal(sent())
    assert refusal is not None and b"INTERNAL_ERROR" in refusal
    assert gw.fake._feature_refusal(sent(model="glm-5.3")) is None
    low = {"enable_thinking": True, "reasoning_effort": "low"}
    assert gw.fake._feature_refusal(sent(model="glm-5.3", features=low)) is not None


async def test_responses_reasoning_effort_uses_the_same_table(gateway):
    gw = await pooled(gateway)
    async with gw.openai() as client:
        reply = await client.responses.create(
            model="GLM-5.3", input="hi", reasoning={"effort": "xhigh"}
        )
    assert reply.output_text
    sent = features(gw)
    assert sent["reasoning_effort"] == "max" and sent["enable_thinking"] is True
