"""Anthropic's ``web_search`` server tool as the upstream's own search, through the SDK.

A request carrying ``{"type": "web_search_20250305", "name": "web_search"}`` switches the
upstream's search on (``features.auto_web_search``); what the search did comes back in
Anthropic's wire format: a ``server_tool_use`` of ``web_search`` with the query the upstream
searched for, its ``web_search_tool_result`` with the sources (title, url), then the answer's
text with the citations linked, and ``usage.server_tool_use.web_search_requests``; streamed
in that order too. Both upstream shapes: 2026 tool_call/tool_response frames (capture 07)
and 2025 ``<glm_block>`` search results (capture 09); a turn that searches twice gives each
search its own sources (synthesized from those shapes). The history of such a turn is
accepted back; ``web_fetch`` and web search beside client tools are 400s naming the tool.
"""

import anthropic
import msgspec
import pytest

from tests.conftest import API_KEY
from tests.recorded import expected

BASE = ("home", "guest_auth")
SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
ASK = [{"role": "user", "content": "What is in the news about Elon Musk this week?"}]
CASES = {
    "stream_v2_toolcall_search_2026": (
        "Elon Musk news this week",
        [
            ("Weekly technology news roundup", "https://news.example.com/tech-roundup"),
            ("Starship test flight update", "https://space.example.org/starship-update"),
        ],
    ),
    "stream_search_glmblock_2025": (
        "which calculus operations are faster in concurrency on CPU",
        None,  # the first two of its search_result entries, checked below
    ),
}


def client_for(gw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20)


STREAMED_ORDER = {
    "stream_v2_toolcall_search_2026": ["server_tool_use", "web_search_tool_result", "text"],
    "stream_search_glmblock_2025": ["text", "server_tool_use", "web_search_tool_result", "text"],
}


def check_blocks(content: list, name: str, whole: bool = True) -> None:
    query, sources = CASES[name]
    kinds = [block.type for block in content]
    assert kinds[-3:] == ["server_tool_use", "web_search_tool_result", "text"], kinds
    use, result, text = content[-3:]
    assert use.name == "web_search" and use.input == {"query": query}
    assert use.id.startswith("srvtoolu_") and result.tool_use_id == use.id
    found = [(r.title, r.url) for r in result.content]
    assert all(r.type == "web_search_result" and r.encrypted_content for r in result.content)
    if sources is not None:
        assert found == sources
    else:
        assert found[:1] == [
            (
                "CPU Performance Bottlenecks Limit Parallel Processing",
                "https://semiengineering.com/cpu-performance-bottlenecks-limit-parallel-processing-speedups",
            )
        ]
    if whole:
        assert text.text == expected(name)["content"]  # citations linked, no site markup


@pytest.mark.parametrize("name", list(CASES))
async def test_web_search_blocks_non_stream(gateway, name):
    gw = await gateway(*BASE, name)
    async with client_for(gw) as client:
        message = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=1024, messages=ASK, tools=[SEARCH]
        )
    check_blocks(message.content, name)
    assert message.stop_reason == "end_turn"
    assert message.usage.server_tool_use.web_search_requests == 1
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["features"]["auto_web_search"] is True
    assert "web_search" not in str(body["messages"])  # not offered as an emulated tool


async def test_claude_codes_websearch_request(gateway):
    """What Claude Code 2.1.331's WebSearch sends (read from its bundle): the server tool
    alone, forced with tool_choice, thinking disabled, streamed."""
    gw = await gateway(*BASE, "stream_v2_toolcall_search_2026")
    async with client_for(gw) as client:
        message = await client.messages.create(
            model="claude-haiku-5-5",
            max_tokens=8192,
            system="You are an assistant for performing a web search tool use",
            messages=[
                {"role": "user", "content": "Perform a web search for the query: Elon Musk news"}
            ],
            tools=[{**SEARCH, "max_uses": 8}],
            tool_choice={"type": "tool", "name": "web_search"},
            thinking={"type": "disabled"},
        )
    check_blocks(message.content, "stream_v2_toolcall_search_2026")
    assert message.content[0].type == "server_tool_use"  # no thinking block


@pytest.mark.parametrize("name", list(CASES))
async def test_web_search_blocks_streamed_in_order(gateway, name):
    gw = await gateway(*BASE, name, pace=0.005)  # frames one by one: deltas as they come
    async with (
        client_for(gw) as client,
        client.messages.stream(
            model="claude-sonnet-5-5", max_tokens=1024, messages=ASK, tools=[SEARCH]
        ) as stream,
    ):
        events = [event async for event in stream]
        message = await stream.get_final_message()
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    # as the upstream ran it: 2026 searched before writing; the 2025 answer begins "I'll
    # search", then searches, then goes on (text, search, text: Anthropic's own shape)
    order = STREAMED_ORDER[name]
    assert [s for s in starts if s != "thinking"] == order
    # the answer's text streams live around the search blocks, not in one piece at the end
    texts = [e for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert len(texts) > 3
    blocks = [b for b in message.content if b.type != "thinking"]
    assert "".join(b.text for b in blocks if b.type == "text") == expected(name)["content"]
    text_at = order.index("server_tool_use")
    check_blocks([*blocks[text_at : text_at + 2], blocks[-1]], name, whole=False)
    assert message.usage.server_tool_use.web_search_requests == 1


async def test_the_turn_goes_back_in_the_history(gateway):
    gw = await gateway(*BASE, "stream_v2_toolcall_search_2026", "stream_glm5_plain_thinking")
    async with client_for(gw) as client:
        first = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=1024, messages=ASK, tools=[SEARCH]
        )
        history = [
            *ASK,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": "Thanks. Anything else?"},
        ]
        second = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=1024, messages=history, tools=[SEARCH]
        )
    assert second.content[-1].type == "text"
    sent = msgspec.json.decode(gw.completions_seen()[1].body)["messages"]
    earlier = next(m for m in sent if m["role"] == "assistant")["content"]
    assert "(Searched the web for: Elon Musk news this week)" in earlier
    assert "- Starship test flight update: https://space.example.org/starship-update" in earlier


@pytest.mark.parametrize(
    ("tools", "param", "words"),
    [
        (
            [
                {"name": "get_time", "input_schema": {"type": "object"}},
                SEARCH,
            ],
            "tools.1:",
            "cannot be combined with client tools",
        ),
        ([{"type": "web_fetch_20250910", "name": "web_fetch"}], "tools.0:", "not supported"),
    ],
)
async def test_refusals_name_the_tool(gateway, tools, param, words):
    gw = await gateway(*BASE)
    async with client_for(gw) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model="claude-sonnet-5-5", max_tokens=64, messages=ASK, tools=tools
            )
    assert param in info.value.message and words in info.value.message
    assert not gw.completions_seen()


async def test_responses_web_search_tool(gateway):
    """Responses ``web_search`` alone: the upstream's search, as a web_search_call item."""
    gw = await gateway(*BASE, "stream_v2_toolcall_search_2026", pace=0.005)
    async with gw.openai() as client:
        response = await client.responses.create(
            model="GLM-4.7", input=ASK[0]["content"], tools=[{"type": "web_search"}]
        )
        async with client.responses.stream(
            model="GLM-4.7", input=ASK[0]["content"], tools=[{"type": "web_search"}]
        ) as stream:
            kinds = [event.type async for event in stream]
            streamed = await stream.get_final_response()
    assert kinds.count("response.output_text.delta") > 3  # live after the search items
    want = expected("stream_v2_toolcall_search_2026")["content"]
    query, sources = CASES["stream_v2_toolcall_search_2026"]
    for answer in (response, streamed):
        call, message = [i for i in answer.output if i.type != "reasoning"]
        assert call.type == "web_search_call" and call.status == "completed"
        assert call.action.query == query
        assert [s.url for s in call.action.sources] == [url for _, url in sources]
        assert message.type == "message" and answer.output_text == want
    assert "response.web_search_call.completed" in kinds
    assert kinds.index("response.web_search_call.completed") < kinds.index(
        "response.output_text.delta"
    )
    for seen in gw.completions_seen():
        assert msgspec.json.decode(seen.body)["features"]["auto_web_search"] is True


async def test_responses_web_search_beside_functions_is_not_offered(gateway):
    """Codex sends web_search with its function tools: search stays off, the header says."""
    gw = await gateway(*BASE, "tools_single")
    fn = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
    async with gw.openai() as client:
        raw = await client.responses.with_raw_response.create(
            model="GLM-4.7", input="What time is it?", tools=[fn, {"type": "web_search"}]
        )
    assert raw.headers["X-Gateway-Tools"] == "not offered: web_search"
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["features"]["auto_web_search"] is False


def _sse(*frames: dict) -> bytes:
    done = {"phase": "done", "done": True}
    return b"".join(
        b"data: " + msgspec.json.encode({"type": "chat:completion", "data": f}) + b"\n\n"
        for f in (*frames, done)
    )


def _glm_search(query: str, title: str, url: str) -> str:
    metadata = {
        "name": "search",
        "arguments": msgspec.json.encode({"queries": [query]}).decode(),
        "result": f"\u30101\u2020{title}\u2020{url}\u3011\nabout it",
        "status": "completed",
    }
    results = {"search_result": [{"title": title, "url": url, "text": "about it"}]}
    block = {"type": "mcp", "data": {"metadata": metadata, "browser": results}}
    return f"<glm_block >{msgspec.json.encode(block).decode()}</glm_block>"


# One answer that searches twice, text between: each search's blocks must carry the sources
# its own call found (the 2026 tool_response after its tool_call; a 2025 glm_block's own
# results), not every source of the turn under the first query.
TWICE = {
    "2026": _sse(
        {"phase": "tool_call", "delta_name": "search", "delta_arguments": ""},
        {"phase": "tool_call", "delta_arguments": '{"search_query": [{"q": "alpha"}]}'},
        {
            "phase": "tool_response",
            "tool_name": "search",
            "status": "completed",
            "delta_content": "[ref_id=turn0search0\u2020Alpha\u2020https://a.example/1]\nDate: -",
        },
        {"phase": "answer", "delta_content": "Alpha first."},
        {"phase": "tool_call", "delta_name": "search", "delta_arguments": ""},
        {"phase": "tool_call", "delta_arguments": '{"search_query": [{"q": "beta"}]}'},
        {
            "phase": "tool_response",
            "tool_name": "search",
            "status": "completed",
            "delta_content": "[ref_id=turn1search0\u2020Beta\u2020https://b.example/2]\nDate: -",
        },
        {"phase": "answer", "delta_content": " Then beta."},
    ),
    "2025": _sse(
        {"phase": "answer", "delta_content": "Alpha first. "},
        {
            "phase": "tool_call",
            "delta_content": _glm_search("alpha", "Alpha", "https://a.example/1"),
        },
        {"phase": "answer", "delta_content": "\n\nThen beta. "},
        {"phase": "tool_call", "delta_content": _glm_search("beta", "Beta", "https://b.example/2")},
        {"phase": "answer", "delta_content": "\n\nDone."},
    ),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape", list(TWICE))
async def test_each_search_has_its_own_sources(gateway, shape, stream):
    gw = await gateway(*BASE, pace=0.005)
    gw.fake.answers.append(TWICE[shape])
    args = dict(model="claude-sonnet-5-5", max_tokens=1024, messages=ASK, tools=[SEARCH])
    async with client_for(gw) as client:
        if stream:
            async with client.messages.stream(**args) as s:
                message = await s.get_final_message()
        else:
            message = await client.messages.create(**args)
    uses = [b for b in message.content if b.type == "server_tool_use"]
    results = [b for b in message.content if b.type == "web_search_tool_result"]
    assert [u.input for u in uses] == [{"query": "alpha"}, {"query": "beta"}]
    assert [r.tool_use_id for r in results] == [u.id for u in uses]
    found = [[(s.title, s.url) for s in r.content] for r in results]
    assert found == [[("Alpha", "https://a.example/1")], [("Beta", "https://b.example/2")]]
    assert message.usage.server_tool_use.web_search_requests == 2
