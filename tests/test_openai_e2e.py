"""End to end with the official ``openai`` SDK: gateway and cassette upstream on real sockets.

For every recorded stream shape, streamed and not, the client gets exactly the capture's
reasoning and answer, with usage and the finish reason; the upstream saw a request it accepts
(the fake checks query, token, front-end version and signature as the real one does).
"""

import msgspec
import pytest

from tests.recorded import STREAMS, expected

BASE = ("home", "guest_auth")
MODEL_FOR = {
    "stream_glm5_plain_thinking": "GLM-5.3-Flash-Thinking",
    "stream_glm46_details_thinking": "GLM-4.6-Thinking",
    "stream_glm46v_details_glmblock": "GLM-4.6V-Thinking",
    "stream_search_glmblock_2025": "GLM-4.5-Search",
    "stream_v2_toolcall_search_2026": "GLM-5.3-Flash-Search",
    "stream_content_filter": "GLM-4.5",
    "stream_utf16_edit_rewind": "GLM-5.3-Flash-Thinking",
    "stream_snapshot_2026": "GLM-4.7",
}


@pytest.mark.parametrize("name", STREAMS)
async def test_non_stream_gives_the_capture_text(gateway, name):
    gw = await gateway(*BASE, name)
    want = expected(name)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model=MODEL_FOR[name], messages=[{"role": "user", "content": "hello there"}]
        )
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == MODEL_FOR[name]
    assert reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert (choice.message.content or "") == want["content"]
    assert (getattr(choice.message, "reasoning_content", None) or "") == want["reasoning_content"]
    assert choice.finish_reason == want["finish_reason"]
    usage = reply.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    assert usage == want["usage"]


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("split", ["event", "random"])
async def test_stream_gives_the_capture_text(gateway, name, split):
    gw = await gateway(*BASE, name, split=split, pace=0.0005 if split == "random" else 0)
    want = expected(name)
    async with gw.openai() as client:
        stream = await client.chat.completions.create(
            model=MODEL_FOR[name],
            messages=[{"role": "user", "content": "hello there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert content == want.get("streamed_content", want["content"]) or (
        "streamed_content" in want and want["streamed_content"].startswith(content)
    )
    assert reasoning == want["reasoning_content"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == want["finish_reason"] and not any(finishes[:-1])
    assert chunks[-1].choices == []
    usage = chunks[-1].usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    )
    assert usage == want["usage"]


async def test_stream_without_include_usage_has_no_usage_chunk(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    async with gw.openai() as client:
        stream = await client.chat.completions.create(
            model="GLM-4.5", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_upstream_request_is_what_the_web_page_sends(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    async with gw.openai() as client:
        await client.chat.completions.create(
            model="glm-4.6-thinking",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "first"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "What is 2+2?"},
            ],
            temperature=0.3,
            top_p=0.9,
            max_tokens=50,
        )
    (seen,) = gw.completions_seen()
    body = msgspec.json.decode(seen.body)
    assert body["model"] == "GLM-4-6-API-V1"
    assert body["signature_prompt"] == "What is 2+2?"
    assert body["features"]["enable_thinking"] is True
    assert body["features"]["web_search"] is False
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][1]["content"] == "first"
    assert body["params"] == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 50}
    assert seen.headers["X-FE-Version"] == "prod-fe-1.1.95"
    assert seen.headers["Referer"].startswith(gw.fake.base_url + "/c/")
    # one guest per request: anonymous mode never shares a server-side chat
    guests = [r for r in gw.fake.requests if r.path == "/api/v1/auths/"]
    assert len(guests) == 1


async def test_each_request_gets_a_fresh_guest_and_chat(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    async with gw.openai() as client:
        for _ in range(3):
            await client.chat.completions.create(
                model="GLM-4.5", messages=[{"role": "user", "content": "hi"}]
            )
    chats = {msgspec.json.decode(r.body)["chat_id"] for r in gw.completions_seen()}
    assert len(chats) == 3
    assert len([r for r in gw.fake.requests if r.path == "/api/v1/auths/"]) == 3
    # the front-end version is read from the home page once and cached
    assert len([r for r in gw.fake.requests if r.path == "/"]) == 1


@pytest.mark.parametrize(
    ("name", "model", "link"),
    [
        (
            "stream_search_glmblock_2025",
            "GLM-4.5-Search",
            "[On parallel processing benchmarks](https://www.govinfo.gov/",
        ),
        (
            "stream_v2_toolcall_search_2026",
            "GLM-5.3-Flash-Search",
            "[Starship test flight update](https://space.example.org/starship-update)",
        ),
    ],
)
async def test_search_models_turn_on_web_search_and_link_citations(gateway, name, model, link):
    gw = await gateway(*BASE, name)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "news?"}]
        )
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["features"]["auto_web_search"] is True and body["features"]["web_search"] is False
    content = reply.choices[0].message.content
    assert link in content
    assert "glm_block" not in content and "【" not in content and "ref_id" not in content
