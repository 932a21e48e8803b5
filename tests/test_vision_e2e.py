"""Images on every face, through the official SDKs, against the fake upstream's file API.

An image (OpenAI ``image_url`` part, Anthropic ``image`` block, Responses ``input_image``) is
uploaded with the pooled user token (``POST /api/v1/files/``, multipart), then named in the
completion's ``files`` and in an ``image_url`` part of its message (cassette
``vision_upload``, synthesized from PROTOCOL.md section 6.9); the same bytes again are not
uploaded again (the Redis cache). An http(s) URL is fetched by the gateway (here from a
loopback server, which needs IMAGE_FETCH_PRIVATE). The refusals name the field: a model
without vision, a guest-only gateway, too many images, too many bytes, not an image, a
private host.
"""

import base64
import struct
import zlib

import anthropic
import msgspec
import openai
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from server.settings import SettingsError, load_settings
from tests.accounts import jwt
from tests.conftest import API_KEY

TOKEN = jwt(7)
CASSETTES = ("home", "guest_auth_user_role", "vision_upload")
ANSWER = "The picture is a small solid red square, with nothing else in it."
QUESTION = "What is in this picture?"


def png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """A real PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(row * height)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
BIG = "data:image/png;base64," + base64.b64encode(PNG[:8] + bytes(2000)).decode()
IMAGE_PART = {"type": "image_url", "image_url": {"url": DATA_URL}}


async def vision_gateway(gateway, **settings):
    values = {"zai_tokens": TOKEN, "anonymous_mode": False, **settings}
    return await gateway(*CASSETTES, **values)


def uploads(gw) -> list:
    return [r for r in gw.fake.requests if r.method == "POST" and r.path == "/api/v1/files/"]


def assert_sent_with_the_image(gw, body: dict, image: bytes = PNG) -> None:
    """The completion names, in ``files`` and in its message, a file holding ``image``."""
    (entry,) = body["files"]
    assert gw.fake.files[entry["id"]] == (TOKEN, image)
    assert entry["type"] == "image" and entry["status"] == "uploaded"
    assert entry["ref_user_msg_id"] == body["current_user_message_id"]
    assert entry["file"]["id"] == entry["id"] and entry["size"] == len(image)
    user = body["messages"][-1]
    assert user["role"] == "user"
    assert {"type": "image_url", "image_url": {"url": entry["id"]}} in user["content"]
    assert {"type": "text", "text": QUESTION} in user["content"]
    assert body["signature_prompt"] == QUESTION  # the text alone is signed


def openai_image(url: str = DATA_URL) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


async def test_openai_data_url_is_uploaded_then_named_and_cached(gateway):
    gw = await vision_gateway(gateway)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.6V", messages=openai_image())
        again = await client.chat.completions.create(
            model="GLM-4.6V", messages=openai_image(), stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in again if c.choices])
    assert reply.choices[0].message.content == ANSWER and streamed == ANSWER
    (upload,) = uploads(gw)  # the second request found the file in the cache
    assert upload.headers["Authorization"] == f"Bearer {TOKEN}"
    assert upload.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    first, second = [msgspec.json.decode(r.body) for r in gw.completions_seen()]
    assert_sent_with_the_image(gw, first)
    assert_sent_with_the_image(gw, second)
    assert first["files"][0]["id"] == second["files"][0]["id"]


async def test_anthropic_base64_and_url_blocks(gateway):
    gw = await vision_gateway(gateway, image_fetch_private=True)
    server, url = await image_server()
    try:
        async with anthropic.AsyncAnthropic(
            base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
        ) as client:
            for source in (
                {"type": "base64", "media_type": "image/png", "data": DATA_URL.split(",")[1]},
                {"type": "url", "url": url},
            ):
                message = await client.messages.create(
                    model="GLM-4.6V",
                    max_tokens=512,
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {"type": "image", "source": source},
                                {"type": "text", "text": QUESTION},
                            ],
                        }
                    ],
                )
                assert message.content[-1].text == ANSWER
    finally:
        server.stop()
    for seen in gw.completions_seen():
        assert_sent_with_the_image(gw, msgspec.json.decode(seen.body))
    assert len(uploads(gw)) == 1  # the URL served the same bytes: the cached file


async def test_responses_input_image(gateway):
    gw = await vision_gateway(gateway)
    async with gw.openai() as client:
        response = await client.responses.create(
            model="GLM-4.6V",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": QUESTION},
                        {"type": "input_image", "image_url": DATA_URL, "detail": "auto"},
                    ],
                }
            ],
        )
    assert response.output_text == ANSWER
    assert_sent_with_the_image(gw, msgspec.json.decode(gw.completions_seen()[0].body))


class _Picture(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "image/png")
        self.finish(PNG)


class _Moved(RequestHandler):
    def get(self) -> None:
        self.redirect("/red.png")


async def image_server() -> tuple[HTTPServer, str]:
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/red.png", _Picture), (r"/go", _Moved)]))
    server.add_sockets(sockets)
    return server, f"http://127.0.0.1:{sockets[0].getsockname()[1]}/red.png"


async def test_openai_http_url_is_fetched_and_uploaded(gateway):
    gw = await vision_gateway(gateway, image_fetch_private=True)
    server, url = await image_server()
    try:
        async with gw.openai() as client:
            reply = await client.chat.completions.create(
                model="GLM-4.6V", messages=openai_image(url.replace("/red.png", "/go"))
            )
    finally:
        server.stop()
    assert reply.choices[0].message.content == ANSWER
    assert_sent_with_the_image(gw, msgspec.json.decode(gw.completions_seen()[0].body))


async def test_a_private_host_is_not_fetched_by_default(gateway):
    gw = await vision_gateway(gateway)
    server, url = await image_server()
    try:
        async with gw.openai() as client:
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(model="GLM-4.6V", messages=openai_image(url))
    finally:
        server.stop()
    assert info.value.body["param"] == "messages[0].content[1]"
    assert "IMAGE_FETCH_PRIVATE" in info.value.message
    assert not uploads(gw) and not gw.completions_seen()


@pytest.mark.parametrize(
    ("settings", "model", "messages", "status", "param", "words"),
    [
        ({}, "GLM-4.7", openai_image(), 400, "messages[0].content[1]", "does not take images"),
        (
            {"zai_tokens": "", "anonymous_mode": True},
            "GLM-4.6V",
            openai_image(),
            400,
            "messages[0].content[1]",
            "only guest tokens",
        ),
        (
            {"image_max_count": 1},
            "GLM-4.6V",
            [{"role": "user", "content": [*openai_image()[0]["content"], IMAGE_PART]}],
            400,
            "messages[0].content[2]",
            "IMAGE_MAX_COUNT",
        ),
        (
            {"image_max_bytes": 1024},
            "GLM-4.6V",
            openai_image(BIG),
            413,
            "messages[0].content[1]",
            "IMAGE_MAX_BYTES",
        ),
        (
            {},
            "GLM-4.6V",
            openai_image("data:text/plain;base64," + base64.b64encode(b"hello there").decode()),
            400,
            "messages[0].content[1]",
            "not an image",
        ),
        (
            {},
            "GLM-4.6V",
            openai_image("data:image/png;base64,@@not base64@@"),
            400,
            "messages[0].content[1]",
            "not valid base64",
        ),
    ],
)
async def test_refusals_name_the_image(gateway, settings, model, messages, status, param, words):
    gw = await vision_gateway(gateway, **settings)
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model=model, messages=messages)
    assert info.value.status_code == status
    assert info.value.body["param"] == param and words in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert not uploads(gw) and not gw.completions_seen()


async def test_anthropic_refusal_is_anthropic_shaped(gateway):
    gw = await vision_gateway(gateway)
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model="claude-sonnet-5-5",  # GLM-4.7: no vision
                max_tokens=64,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": QUESTION},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": DATA_URL.split(",")[1],
                                },
                            },
                        ],
                    }
                ],
            )
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "messages.0.content.1" in info.value.message and "GLM-4.6V" in info.value.message


async def test_an_image_in_a_tool_result_goes_with_that_result(gateway):
    """Claude Code's Read of a picture answers with an image block inside the tool_result."""
    gw = await vision_gateway(gateway)
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": DATA_URL.split(",")[1]},
    }
    messages = [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}],
        },
    ]
    read = {"name": "Read", "input_schema": {"type": "object", "properties": {}}}
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as client:
        message = await client.messages.create(
            model="GLM-4.6V", max_tokens=512, messages=messages, tools=[read]
        )
    assert message.content[-1].text == ANSWER
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    (entry,) = body["files"]
    assert gw.fake.files[entry["id"]] == (TOKEN, PNG)
    last = body["messages"][-1]
    assert last["role"] == "user" and '<tool_result name="Read" id="toolu_1">' in str(last)
    assert {"type": "image_url", "image_url": {"url": entry["id"]}} in last["content"]


@pytest.mark.fold
async def test_fold_keeps_the_images_on_the_one_message(gateway):
    gw = await vision_gateway(gateway)
    messages = [{"role": "system", "content": "Be brief."}, *openai_image()]
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.6V", messages=messages)
    assert reply.choices[0].message.content == ANSWER
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    (only,) = body["messages"]
    (entry,) = body["files"]
    assert only["role"] == "user" and "<system>\nBe brief.\n</system>" in only["content"][0]["text"]
    assert only["content"][1] == {"type": "image_url", "image_url": {"url": entry["id"]}}


async def test_anthropic_image_in_an_assistant_turn_is_a_400_naming_it(gateway):
    """Found by mypy: the refusal passed its field positionally and was a 500 TypeError."""
    gw = await vision_gateway(gateway)
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": DATA_URL.split(",")[1]},
    }
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model="GLM-4.6V",
                max_tokens=64,
                messages=[
                    {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": [image]},
                    {"role": "user", "content": QUESTION},
                ],
            )
    assert "messages.1.content.0: images are taken in user messages only" in info.value.message
    assert not uploads(gw) and not gw.completions_seen()


async def test_vision_model_serves_images_sent_to_a_model_without_vision(gateway):
    """VISION_MODEL: Claude Code's claude-* names map to GLM-4.7 (no vision); a pasted
    screenshot is then answered by GLM-4.6V instead of refused."""
    gw = await vision_gateway(gateway, vision_model="GLM-4.6V")
    source = {"type": "base64", "media_type": "image/png", "data": DATA_URL.split(",")[1]}
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as client:
        message = await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=512,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": source},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
        )
    assert message.content[-1].text == ANSWER and message.model == "claude-sonnet-5-5"
    body = msgspec.json.decode(gw.completions_seen()[0].body)
    assert body["model"] == "glm-4.6v"
    assert_sent_with_the_image(gw, body)


def test_vision_model_must_have_vision():
    with pytest.raises(SettingsError, match="VISION_MODEL: is not a model of the table with"):
        load_settings(_env_file=None, auth_token="k", vision_model="GLM-4.7")
