"""Upstream edits end to end, through the official ``openai`` and ``anthropic`` SDKs.

The synthesized cassettes of PROTOCOL.md section 6.1 (characters outside the BMP before a
UTF-16 ``edit_index``, an edit rewinding into text already streamed, a ``content`` snapshot,
an index-less ``edit_content``) reach both faces as exactly the final text, streamed (event by
event and cut at random bytes) or not. (The OpenAI face also runs them in
``test_openai_e2e``, with every recorded stream.) An edit that changes words a streaming
client already has: with ``STREAM_HOLDBACK`` covering it the stream is exact; without, the
client keeps what it had and gets the final text from the changed word on.
"""

import pytest

from tests.recorded import expected

BASE = ("home", "guest_auth")
EDITED = ["stream_utf16_edit_rewind", "stream_snapshot_2026"]
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name", EDITED)
async def test_anthropic_non_stream_is_the_final_text(gateway, name):
    gw = await gateway(*BASE, name)
    want = expected(name)
    async with gw.anthropic() as client:
        message = await client.messages.create(
            model="claude-opus-5-5",
            max_tokens=1024,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
    thinking = "".join(b.thinking for b in message.content if b.type == "thinking")
    text = "".join(b.text for b in message.content if b.type == "text")
    assert (thinking, text) == (want["reasoning_content"], want["content"])
    assert message.usage.output_tokens == want["usage"]["completion_tokens"]


@pytest.mark.parametrize("name", EDITED)
@pytest.mark.parametrize("split", ["event", "random"])
async def test_anthropic_stream_is_the_final_text(gateway, name, split):
    gw = await gateway(*BASE, name, split=split, pace=0.0005 if split == "random" else 0)
    want = expected(name)
    async with gw.anthropic() as client:
        stream = await client.messages.create(
            model="claude-opus-5-5",
            max_tokens=1024,
            messages=HI,
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
        events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    thinking = "".join(d.thinking for d in deltas if d.type == "thinking_delta")
    text = "".join(d.text for d in deltas if d.type == "text_delta")
    assert (thinking, text) == (want["reasoning_content"], want["content"])
    assert events[-1].type == "message_stop"


async def openai_stream(gw) -> str:
    async with gw.openai() as client:
        stream = await client.chat.completions.create(model="GLM-4.7", messages=HI, stream=True)
        chunks = [chunk async for chunk in stream]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


FINAL = "The capital of Australia is Canberra \U0001f1e6\U0001f1fa, a planned city."
SENT = "The capital of Australia is Sydney \U0001f1e6\U0001f1fa, a big city."


async def test_holdback_gives_a_streaming_client_the_rewritten_text_exactly(gateway):
    gw = await gateway(*BASE, "edit_rewrites_streamed", pace=0.01, stream_holdback=64)
    assert await openai_stream(gw) == FINAL
    async with gw.anthropic() as client:
        text = ""
        async with client.messages.stream(
            model="claude-haiku-5-5", max_tokens=100, messages=HI
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
    assert text == FINAL


async def test_without_holdback_sent_words_stay_and_the_final_text_follows(gateway):
    gw = await gateway(*BASE, "edit_rewrites_streamed", pace=0.05)
    # Each event is its own read: the first answer is out before the edit arrives (on a busy
    # machine the last delta may come with the edit: the client then has a shorter prefix).
    got = await openai_stream(gw)
    rest = " Canberra \U0001f1e6\U0001f1fa, a planned city."
    assert got.endswith(rest) and SENT.startswith(got[: -len(rest)])
    assert got[: -len(rest)].startswith("The capital of Australia is Sydney")
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.7", messages=HI)
    assert reply.choices[0].message.content == FINAL
