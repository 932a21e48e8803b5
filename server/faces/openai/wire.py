"""OpenAI Chat Completions request shapes, decoded once at the edge with msgspec.

Owns the request Structs and ``decode_chat_request``, which turns msgspec's messages into a
``GatewayError`` naming the field (e.g. ``messages[0].content``). Harmless unknown fields are
ignored, as OpenAI-compatible servers must; ``server.faces.openai.convert`` turns the decoded
request into the neutral ``Conversation``.
"""

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from server.web.errors import decode_json, validation_error

__all__ = ["ChatRequest", "decode_chat_request", "validation_error"]


MAX_STOP = 4  # OpenAI's own cap; each stop sequence is searched for in all the answer


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: Any = None


class FunctionDef(Struct):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.:-]+$")]
    description: str = ""
    parameters: dict[str, Any] = {}
    strict: bool | None = None


class ToolDef(Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class FunctionCall(Struct):
    name: str
    arguments: str = ""


class ToolCallIn(Struct):
    function: FunctionCall
    id: str = ""
    type: Literal["function"] = "function"


class Named(Struct):
    name: str


class NamedToolChoice(Struct):
    function: Named
    type: Literal["function"] = "function"


class Message(Struct):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None


class JsonSchemaSpec(Struct):
    name: str = ""
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(Struct):
    include_usage: bool = False


class ChatRequest(Struct, kw_only=True):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    zai_captcha: Annotated[str, Meta(max_length=8192)] | None = None  # single-use param
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=MAX_STOP)] | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None
    function_call: Literal["none", "auto"] | Named | None = None
    response_format: ResponseFormat | None = None


_decoder = msgspec.json.Decoder(ChatRequest)


def decode_chat_request(body: bytes) -> ChatRequest:
    return decode_json(body, _decoder.decode)
