"""An upstream that stalls: how many attempts it costs, what the client is told, and the
``REQUEST_TIMEOUT`` deadline over all attempts (issue 13, stalls).

The fake upstream goes silent mid-answer (``stall_after``) or never answers
(``stall_headers``); timeouts are small so the suite stays fast. The assertions are on the
attempts the fake saw and the 504's message, not on wall-clock tightness.
"""

import anthropic
import openai
import pytest

from tests.conftest import API_KEY

BASE = ("home", "guest_auth")
OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]


async def test_a_stall_midway_is_retried_once_and_the_504_says_so(gateway, exchanges):
    # UPSTREAM_RETRIES=2 (the default): a stall used to be tried three times, three idle
    # timeouts (6 minutes at the default 120 s) before the 504.
    gw = await gateway(*BASE, OK, stall_after=10, upstream_idle_timeout=0.3)
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 504
    assert info.value.code == "stalled"
    assert info.value.response.headers["x-should-retry"] == "true"
    message = info.value.message
    assert "stopped sending midway" in message and "sent nothing for 0.3 s" in message
    assert "(2 upstream attempts in " in message, message
    assert len(gw.completions_seen()) == 2
    assert exchanges.left_open() == 0


async def test_no_answer_at_all_is_still_retried_up_to_upstream_retries(gateway):
    gw = await gateway(*BASE, OK, stall_headers=True, upstream_header_timeout=0.2)
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 504 and info.value.code == "timeout"
    assert "(3 upstream attempts in " in info.value.message
    assert len(gw.completions_seen()) == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_request_timeout_bounds_the_wait_over_all_attempts(gateway, stream, exchanges):
    # Each attempt may wait 5 s for headers (three of them: 15 s); REQUEST_TIMEOUT is 0.5 s.
    gw = await gateway(
        *BASE, OK, stall_headers=True, upstream_header_timeout=5, request_timeout=0.5
    )
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO, stream=stream)
    assert info.value.status_code == 504 and info.value.code == "timeout"
    message = info.value.message
    assert "no answer within REQUEST_TIMEOUT (0.5 s) after 1 upstream attempt in " in message
    assert len(gw.completions_seen()) == 1
    await gw.fake.wait_aborted(0)  # the stalled upstream request was closed
    assert exchanges.left_open() == 0


async def test_request_timeout_ends_a_slow_non_streamed_answer(gateway):
    # 45 events 0.05 s apart: the answer would take over 2 s; the client waits 0.5 s at most.
    gw = await gateway(*BASE, OK, pace=0.05, request_timeout=0.5)
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.status_code == 504
    assert "REQUEST_TIMEOUT (0.5 s) after 1 upstream attempt" in info.value.message
    await gw.fake.wait_aborted(1)


async def test_a_stream_that_began_outlives_request_timeout(gateway):
    # The same slow answer streamed: the client sees progress, so the deadline lets it run.
    gw = await gateway(*BASE, OK, pace=0.05, request_timeout=0.5)
    async with gw.openai() as client:
        stream = await client.chat.completions.create(model="GLM-4.5", messages=HELLO, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert gw.fake.streams_completed == 1


async def test_a_stall_after_bytes_were_streamed_ends_with_an_error_event(gateway):
    gw = await gateway(*BASE, OK, stall_after=10, upstream_idle_timeout=0.3)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=API_KEY, max_retries=0)
    async with client:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client.messages.stream(
                model="GLM-4.5", max_tokens=100, messages=HELLO
            ) as stream:
                async for _ in stream:
                    pass
    assert "stopped sending midway" in str(info.value)
    assert "(1 upstream attempt in " in str(info.value)
    assert len(gw.completions_seen()) == 1
