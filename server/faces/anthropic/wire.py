"""Anthropic Messages request shapes, decoded once at the edge with msgspec.

Owns the request Structs and ``decode_messages_request`` (errors name the field, like the
OpenAI face's). Content blocks are a tagged union on ``type``: ``text``, ``image``,
``tool_use``, ``tool_result``, ``thinking``, ``redacted_thinking``, ``document`` and an
earlier answer's ``server_tool_use``/``web_search_tool_result``; inside a ``tool_result`` any
block type is taken (see convert). Fields the gateway does not use (``cache_control``,
``citations``, ``metadata``, ``top_k``, ``service_tier``...) are accepted and ignored.
"""

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from server.core.errors import GatewayError
from server.web.errors import decode_json

__all__ = ["MessagesRequest", "decode_messages_request"]


# Anthropic documents no cap; each sequence is searched for in all the answer, so a
# client-sized list is client-sized work. 16 is beyond what SDKs and agents send.
MAX_STOP_SEQUENCES = 16


class TextBlock(Struct, tag_field="type", tag="text"):
    text: str


class ImageBlock(Struct, tag_field="type", tag="image"):
    source: Any = None


class DocumentBlock(Struct, tag_field="type", tag="document"):
    source: Any = None


class ToolUseBlock(Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any] = {}


class ToolResultBlock(Struct, tag_field="type", tag="tool_result"):
    tool_use_id: str
    # Blocks of any type: Claude Code's deferred tools answer with ``tool_reference`` blocks,
    # and newer block types keep coming; convert renders each as text (images refused).
    content: str | list[dict[str, Any]] = ""
    is_error: bool = False


class ThinkingBlock(Struct, tag_field="type", tag="thinking"):
    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlock(Struct, tag_field="type", tag="redacted_thinking"):
    data: str = ""


class ServerToolUseBlock(Struct, tag_field="type", tag="server_tool_use"):
    """An earlier answer's web search, sent back with the history."""

    id: str = ""
    name: str = ""
    input: dict[str, Any] = {}


class WebSearchResultBlock(Struct, tag_field="type", tag="web_search_tool_result"):
    tool_use_id: str = ""
    content: Any = None  # web_search_result entries (title, url, ...), or an error object


Block = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ServerToolUseBlock
    | WebSearchResultBlock
)


class InputMessage(Struct):
    # Claude Code puts a "system" message (environment facts) among the messages too.
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class ToolDef(Struct):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    description: str = ""
    input_schema: dict[str, Any] = {}
    type: str | None = None  # server tools (web_search_...) carry a type and are not emulated
    defer_loading: bool = False  # a placeholder for tools loaded later: not offered


class ToolChoice(Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(Struct):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = None


class OutputConfig(Struct):
    effort: str | None = None  # low | medium | high | xhigh | max (server/core/effort.py)
    format: Any = None  # structured output: accepted, not enforced


class MessagesRequest(Struct, kw_only=True):
    model: str
    messages: list[InputMessage]
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: int | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    metadata: dict[str, Any] | None = None
    # The caller's single-use captcha_verify_param, as on the OpenAI face (or the
    # X-Zai-Captcha header); never logged.
    zai_captcha: Annotated[str, Meta(max_length=8192)] | None = None


class CountTokensRequest(Struct, kw_only=True):
    model: str
    messages: list[InputMessage]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)


def decode_messages_request(body: bytes, count_only: bool = False) -> MessagesRequest:
    """Decode (``count_only``: a count_tokens request, which needs no ``max_tokens``)."""
    if count_only:
        count = decode_json(body, _count_decoder.decode)
        req = MessagesRequest(**{f: getattr(count, f) for f in count.__struct_fields__})
    else:
        req = decode_json(body, _decoder.decode)
    if req.max_tokens is None and not count_only:
        raise GatewayError("invalid_request", "max_tokens: field required", param="max_tokens")
    if not req.messages:
        raise GatewayError(
            "invalid_request", "messages: at least one message is required", param="messages"
        )
    return req
