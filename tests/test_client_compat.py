"""What the official SDKs do with the gateway's answers, beyond the happy path.

A 4xx no retry can fix says ``x-should-retry: false`` (the SDKs then send the request once,
not three times; Claude Code not eleven), 429/5xx say ``true``.
"""

import anthropic
import msgspec
import openai
import pytest
from loguru import logger
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import API_KEY
from tests.recorded import expected

BASE = ("home", "guest_auth")
HI = [{"role": "user", "content": "hi"}]


class AccessLines:
    """The gateway's own access lines, one per request it answered."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.sink = logger.add(self.lines.append, level="INFO", format="{message}")

    def for_path(self, path: str) -> list[str]:
        return [line for line in self.lines if f" {path} " in line and "status=" in line]

    def close(self) -> None:
        logger.remove(self.sink)


@pytest.fixture
def access_lines():
    lines = AccessLines()
    yield lines
    lines.close()


async def test_bad_key_is_sent_once_by_the_anthropic_sdk(gateway, access_lines):
    gw = await gateway(*BASE)
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-wrong", timeout=20) as c:
        assert c.max_retries == 2  # the SDK's default: it would retry a 401 without the header
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await c.messages.create(model="claude-sonnet-5-5", max_tokens=64, messages=HI)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(access_lines.for_path("/v1/messages")) == 1


async def test_bad_key_is_sent_once_by_the_openai_sdk(gateway, access_lines):
    gw = await gateway(*BASE)
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-wrong", timeout=20)
    async with client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="glm-4.7", messages=HI)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(access_lines.for_path("/v1/chat/completions")) == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "retry"),
    [
        ("POST", "/v1/chat/completions", b"{", 400, "false"),
        ("POST", "/v1/messages", b'{"model": 1}', 400, "false"),
        ("GET", "/v1/nowhere", None, 404, "false"),
        ("POST", "/v1/chat/completions", b"x" * 2048, 413, "false"),
    ],
)
async def test_should_retry_header_on_client_errors(gateway, method, path, body, status, retry):
    gw = await gateway(*BASE, max_body_bytes=1024)
    answer = await AsyncHTTPClient().fetch(
        gw.url + path,
        method=method,
        body=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        raise_error=False,
    )
    assert answer.code == status
    assert answer.headers["x-should-retry"] == retry


async def test_should_retry_true_when_the_pool_is_empty(gateway):
    # No guest tokens allowed and no user tokens: the gateway cannot serve, a retry may.
    gw = await gateway(*BASE, anonymous_mode=False)
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as c:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await c.messages.create(model="claude-sonnet-5-5", max_tokens=64, messages=HI)
    assert caught.value.status_code >= 500
    assert caught.value.response.headers["x-should-retry"] == "true"


SEARCH_TOOL = {
    "name": "ToolSearch",
    "description": "Find deferred tools",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}
DEFERRED = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "defer_loading": True,
    },
    {
        "name": "launch_rockets",
        "description": "Never referenced",
        "input_schema": {"type": "object", "properties": {}},
        "defer_loading": True,
    },
]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_reference_in_a_tool_result_loads_the_deferred_tool(gateway, stream):
    # Claude Code's deferred tools: ToolSearch answers with tool_reference blocks.
    gw = await gateway(*BASE, "tools_final_answer")
    messages = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "ToolSearch", "input": {"query": "w"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [
                        {"type": "tool_reference", "tool_name": "get_weather"},
                        {"type": "text", "text": "one match"},
                        {"type": "search_result", "title": "Forecast", "source": "doc://a"},
                    ],
                }
            ],
        },
    ]
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as client:
        args = dict(
            model="claude-sonnet-5-5",
            max_tokens=500,
            messages=messages,
            tools=[SEARCH_TOOL, *DEFERRED],
        )
        if stream:
            async with client.messages.stream(**args) as s:
                final = await s.get_final_message()
        else:
            final = await client.messages.create(**args)
    assert final.content[-1].text == "It is 18 °C (64.4 °F) in Paris right now."
    sent = msgspec.json.decode(gw.completions_seen()[0].body)["messages"]
    result = sent[-1]["content"]
    assert "Tool get_weather is now loaded and can be called.\none match\n" in result
    assert '[search_result] {"title":"Forecast","source":"doc://a"}' in result
    assert '"name":"get_weather"' in sent[0]["content"]  # the referenced tool is offered
    assert "launch_rockets" not in sent[0]["content"]  # a deferred one nobody loaded is not


async def test_image_in_a_tool_result_is_still_refused_naming_the_field(gateway):
    gw = await gateway(*BASE)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    messages = [
        {"role": "user", "content": "look"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}],
        },
    ]
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(
                model="claude-sonnet-5-5", max_tokens=50, messages=messages
            )
    assert "messages.2.content.0.content.0" in caught.value.message


PAGE = "http://127.0.0.1:9"  # a page's origin: another port than the gateway's
SDK_HEADERS = "anthropic-version,x-api-key,content-type,x-stainless-os,x-stainless-retry-count"


async def fetch(gw, path, method="GET", origin=PAGE, **headers):
    body = headers.pop("body", None)
    return await AsyncHTTPClient().fetch(
        gw.url + path,
        method=method,
        body=body,
        headers={"Origin": origin, **headers},
        raise_error=False,
    )


@pytest.mark.parametrize(
    "path",
    ["/v1/messages", "/v1/chat/completions", "/v1/models", "/v1/responses", "/v1/responses/resp_1"],
)
async def test_cors_preflight_allows_what_the_sdks_send(gateway, path):
    gw = await gateway(*BASE, cors_origins=f"https://ui.example,{PAGE}")
    answer = await fetch(
        gw,
        path,
        "OPTIONS",
        **{
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": SDK_HEADERS,
        },
    )
    assert answer.code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert answer.headers["Vary"] == "Origin"
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert answer.headers["Access-Control-Allow-Headers"] == SDK_HEADERS
    other = await fetch(gw, path, "OPTIONS", origin="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_cors_headers_on_answers_errors_and_streams(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking", cors_origins="*")
    bad = await fetch(gw, "/v1/messages", "POST", body=b"{}", **{"x-api-key": "sk-wrong"})
    assert bad.code == 401 and bad.headers["Access-Control-Allow-Origin"] == "*"
    assert "x-should-retry" in bad.headers["Access-Control-Expose-Headers"]
    models = await fetch(gw, "/v1/models", Authorization=f"Bearer {API_KEY}")
    assert models.code == 200 and models.headers["Access-Control-Allow-Origin"] == "*"
    body = msgspec.json.encode(
        {"model": "claude-sonnet-5-5", "max_tokens": 64, "messages": HI, "stream": True}
    )
    stream = await fetch(gw, "/v1/messages", "POST", body=body, **{"x-api-key": API_KEY})
    assert stream.code == 200 and stream.headers["Access-Control-Allow-Origin"] == "*"
    assert b"event: message_stop" in stream.body


async def test_cors_off_by_default(gateway):
    gw = await gateway(*BASE)
    answer = await fetch(gw, "/v1/messages", "OPTIONS", **{"Access-Control-Request-Method": "POST"})
    assert answer.code == 405
    assert "Access-Control-Allow-Origin" not in answer.headers
    models = await fetch(gw, "/v1/models", Authorization=f"Bearer {API_KEY}")
    assert "Access-Control-Allow-Origin" not in models.headers


async def test_openai_text_parts_are_separate_lines(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]
    async with gw.openai() as client:
        await client.chat.completions.create(
            model="GLM-4.7", messages=[{"role": "user", "content": parts}]
        )
    sent = msgspec.json.decode(gw.completions_seen()[0].body)["messages"]
    assert sent[-1]["content"] == "hi\nthere"


@pytest.mark.parametrize("stream", [False, True])
async def test_no_thinking_blocks_when_thinking_is_disabled(gateway, stream):
    # The upstream thinks anyway (the cassette has a thinking phase): the client asked not to.
    name = "stream_glm5_plain_thinking"
    gw = await gateway(*BASE, name)
    args = dict(
        model="claude-opus-5-5",
        max_tokens=64,
        messages=HI,
        thinking={"type": "disabled"},
    )
    async with gw.anthropic() as client:
        if stream:
            async with client.messages.stream(**args) as s:
                events = [event async for event in s]
                message = await s.get_final_message()
            starts = [e.content_block.type for e in events if e.type == "content_block_start"]
            assert starts == ["text"]
            assert not [
                e
                for e in events
                if "thinking" in getattr(e, "delta", {}).__class__.__name__.lower()
            ]
        else:
            message = await client.messages.create(**args)
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == expected(name)["content"]
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["features"]["enable_thinking"] is False


async def test_anthropic_max_tokens_is_applied(gateway):
    gw = await gateway(*BASE, "stream_glm5_plain_thinking")
    async with gw.anthropic() as client:
        await client.messages.create(model="claude-sonnet-5-5", max_tokens=77, messages=HI)
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["params"]["max_tokens"] == 77


async def test_models_in_anthropic_shape_for_the_anthropic_sdk(gateway):
    gw = await gateway(*BASE)
    async with gw.anthropic() as client:
        one = await client.models.retrieve("GLM-4.7")
        page = await client.models.list()
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.models.retrieve("no-such-model")
    assert (one.type, one.id) == ("model", "GLM-4.7") and one.created_at.year >= 2025
    ids = [m.id for m in page.data]
    assert "GLM-4.7" in ids and page.has_more is False
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    async with gw.openai() as client:  # without anthropic-version: the OpenAI shape as before
        model = await client.models.retrieve("GLM-4.7")
    assert model.object == "model"
