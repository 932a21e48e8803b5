"""OpenAI Responses API request shapes, decoded once at the edge with msgspec.

Owns the request Structs and ``decode_responses_request``. ``input`` is a string or a list
of items; an item's ``type`` may be left out for a message (the SDKs' "easy" message), so
items are one Struct with every field optional and ``server.faces.responses.convert`` reads
each by its type (naming ``input[i]...`` when one is wrong). Tools are one Struct too: a
``function`` tool is flat (``{"type": "function", "name", "parameters", ...}``), a ``custom``
one has a ``format``, a ``namespace`` one holds its member ``tools``; the other types
(``web_search``, ...) are kept by type so the converter can say which were not offered.
Harmless unknown fields (``include``, ``prompt_cache_key``, ``client_metadata``,
``metadata``, ...) are ignored, as OpenAI-compatible servers must.
"""

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from server.web.errors import decode_json

__all__ = ["InputItem", "Part", "ResponsesRequest", "ToolDef", "decode_responses_request"]


class Part(Struct, omit_defaults=True):
    """One content part: input_text, output_text, refusal, input_image, input_file, ..."""

    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None  # input_image: a data: URL or an http(s) URL
    file_id: str | None = None  # input_image/input_file: an OpenAI Files id
    detail: str | None = None


class SummaryPart(Struct, omit_defaults=True):
    type: str = "summary_text"
    text: str = ""


class InputItem(Struct, kw_only=True, omit_defaults=True):
    type: str = "message"
    id: str | None = None
    role: str | None = None  # messages: user | assistant | system | developer
    content: str | list[Part] | None = None
    status: str | None = None
    # function_call / custom_tool_call and their outputs
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | None = None
    input: str | None = None  # custom_tool_call: the free-form text the model wrote
    output: str | list[Part] | None = None
    # reasoning (accepted, not forwarded: the upstream takes no earlier thinking)
    summary: list[SummaryPart] | None = None
    encrypted_content: str | None = None


class ToolDef(Struct, kw_only=True):
    type: str
    name: Annotated[str, Meta(max_length=64)] | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    format: dict[str, Any] | None = None  # custom: {"type": "text"} or a grammar
    tools: "list[ToolDef] | None" = None  # namespace: its function and custom tools


class NamedTool(Struct, kw_only=True):
    type: str  # "function" / "custom" name one; built-in types ("web_search", ...) are refused
    name: str | None = None


class Reasoning(Struct, kw_only=True):
    effort: str | None = None
    summary: str | None = None


class TextFormat(Struct, kw_only=True):
    type: Literal["text", "json_schema", "json_object"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextOptions(Struct, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(Struct, kw_only=True):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedTool | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    reasoning: Reasoning | None = None
    text: TextOptions | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    zai_captcha: Annotated[str, Meta(max_length=8192)] | None = None  # single-use param


_decoder = msgspec.json.Decoder(ResponsesRequest)


def decode_responses_request(body: bytes) -> ResponsesRequest:
    return decode_json(body, _decoder.decode)
