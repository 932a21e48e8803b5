"""The end-to-end suites again with ``ZAI_HISTORY=fold``, against a fake that takes only role
``user`` (issue 15 item 8; PROTOCOL.md section 6.7, one source says the v2 endpoint now
answers other roles with ``INTERNAL_ERROR``).

Every test of the OpenAI, Anthropic, tools, stop-sequence and features suites is collected
here a second time under the ``fold`` mark: the ``gateway`` fixture then sets ``ZAI_HISTORY=fold``
and the fake's ``strict_roles``, so each passes only if the folded request is accepted and
the client still gets exactly the expected answer. Three tests read the upstream's roles
themselves; they are replaced below by what the folded request must look like. The
``messages`` default keeps its own run in the original modules, so both are always tested and
the default can be switched by a setting the day the upstream tightens.
"""

import anthropic
import msgspec
import openai
import pytest

from tests.conftest import API_KEY
from tests.test_anthropic_e2e import *  # noqa: F403
from tests.test_features_e2e import *  # noqa: F403
from tests.test_openai_e2e import *  # noqa: F403
from tests.test_stop_e2e import *  # noqa: F403
from tests.test_tools_e2e import *  # noqa: F403

pytestmark = pytest.mark.fold

# These read the roles sent upstream; their fold versions follow.
del test_upstream_request_is_what_the_web_page_sends  # noqa: F821
del test_stream_event_sequence  # noqa: F821
del test_a_three_step_agent_loop  # noqa: F821

GUESTS = ("home", "guest_auth", "stream_glm5_plain_thinking")


def sent(gw, index: int = 0) -> list[dict]:
    return msgspec.json.decode(gw.completions_seen()[index].body)["messages"]


async def test_fold_sends_one_user_message_with_labelled_sections(gateway):
    gw = await gateway(*GUESTS)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model="GLM-4.6-Thinking",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "What is 2+2?"},
            ],
        )
    assert reply.choices[0].message.content
    (message,) = sent(gw)
    assert message == {
        "role": "user",
        "content": "<system>\nBe brief.\n</system>\n\n<user>\nfirst\n</user>\n\n"
        "<assistant>\nok\n</assistant>\n\n<user>\nWhat is 2+2?\n</user>",
    }
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["signature_prompt"] == "What is 2+2?"  # still the latest user text


async def test_fold_leaves_a_lone_user_message_as_it_is(gateway):
    gw = await gateway(*GUESTS)
    async with gw.openai() as client:
        await client.chat.completions.create(
            model="GLM-4.7", messages=[{"role": "user", "content": "hello"}]
        )
    assert sent(gw) == [{"role": "user", "content": "hello"}]


async def test_fold_takes_the_anthropic_system_and_streams(gateway):
    gw = await gateway(*GUESTS)
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as client:
        stream = await client.messages.create(
            model="claude-opus-5-5",
            max_tokens=1024,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            system=[{"type": "text", "text": "Be kind."}],
        )
        events = [event async for event in stream]
    assert events[-1].type == "message_stop"
    (message,) = sent(gw)
    assert message["role"] == "user"
    assert message["content"] == "<system>\nBe kind.\n</system>\n\n<user>\nhi\n</user>"


async def test_fold_carries_a_three_step_agent_loop(gateway):
    gw = await gateway("home", "guest_auth", "tools_single", "tools_step2", "tools_final_answer")
    messages = [{"role": "system", "content": "You are terse."}, *ASK]  # noqa: F405
    results = {
        "get_weather": '{"temp_c": 18, "sky": "clear"}',
        "convert_temperature": '{"fahrenheit": 64.4}',
    }
    async with gw.openai() as client:
        for _ in range(3):
            reply = await client.chat.completions.create(
                model="GLM-4.7",
                messages=messages,
                tools=TOOLS,  # noqa: F405
            )
            message = reply.choices[0].message
            if not message.tool_calls:
                break
            messages.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls:
                content = results[call.function.name]
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    assert message.content == "It is 18 °C (64.4 °F) in Paris right now."
    (last,) = sent(gw, 2)
    text = last["content"]
    assert last["role"] == "user" and text.startswith("<system>\nYou are terse.")
    counts = [text.count(tag) for tag in ("<system>", "<user>", "<assistant>")]
    assert counts == [1, 3, 2]  # system, user, assistant (call), tool result, call, result
    assert '"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}' in text
    assert '<tool_result name="convert_temperature"' in text


async def test_the_strict_fake_refuses_other_roles(gateway):
    """What the mode guards against: with ``messages`` the strict fake refuses the request."""
    gw = await gateway(*GUESTS, zai_history="messages")
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(
                model="GLM-4.7",
                messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
            )
    assert err.value.status_code == 502
    assert [m["role"] for m in sent(gw)] == ["system", "user"]
