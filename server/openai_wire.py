"""OpenAI Chat Completions wire shapes, decoded once at the edge with msgspec.

Owns the request Structs, ``decode_chat_request`` (which turns msgspec's messages into a
``GatewayError`` naming the field, e.g. ``messages[0].content``) and ``to_conversation``.
Fields clients send that the upstream cannot honour (``n`` > 1, images) are refused with a
clear 400; harmless unknown fields are ignored, as OpenAI-compatible servers must.
"""

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from server.chat import Conversation, Turn
from server.errors import GatewayError
from server.models import MODELS, find_model

__all__ = ["ChatRequest", "decode_chat_request", "to_conversation"]


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: Any = None


class Message(Struct):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class StreamOptions(Struct):
    include_usage: bool = False


class ChatRequest(Struct, kw_only=True):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None


_decoder = msgspec.json.Decoder(ChatRequest)
_PATH = re.compile(r" - at `\$\.?([^`]*)`")


def decode_chat_request(body: bytes) -> ChatRequest:
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise GatewayError("invalid_json", str(exc).removeprefix("JSON is malformed: ")) from None


def validation_error(exc: msgspec.ValidationError) -> GatewayError:
    """msgspec's message, with the JSON path turned into the field name clients know."""
    text = str(exc)
    found = _PATH.search(text)
    param = found[1] if found else None
    if param is None and "missing required field" in text:
        param = text.split("`")[1] if "`" in text else None
    message = _PATH.sub("", text)
    if param:
        message = f"invalid field '{param}': {message}"
    return GatewayError("invalid_request", message, param=param)


def to_conversation(req: ChatRequest, request_id: str) -> Conversation:
    model = find_model(req.model)
    if model is None:
        names = ", ".join(m.id for m in MODELS.values())
        raise GatewayError(
            "model_not_found",
            f"the model '{req.model}' does not exist; available models: {names}",
            param="model",
        )
    if req.n is not None and req.n > 1:
        raise GatewayError("invalid_request", "only n=1 is supported", param="n")
    turns = [_turn(i, msg) for i, msg in enumerate(req.messages)]
    thinking = None
    if req.reasoning_effort is not None:
        thinking = req.reasoning_effort not in ("none", "minimal")
    return Conversation(
        model=model,
        turns=[turn for turn in turns if turn.text or turn.role == "user"],
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        thinking=thinking,
        request_id=request_id,
    )


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _turn(index: int, msg: Message) -> Turn:
    role = _ROLES.get(msg.role)
    if role is None:
        raise GatewayError(
            "invalid_request",
            f"messages[{index}]: role '{msg.role}' needs tool support, which is not available yet",
            param=f"messages[{index}].role",
        )
    content = msg.content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, ImagePart):
                raise GatewayError(
                    "invalid_request",
                    f"messages[{index}].content[{j}]: image input is not supported",
                    param=f"messages[{index}].content[{j}]",
                )
            parts.append(part.text)
        content = "".join(parts)
    if role == "user" and not content:
        raise GatewayError(
            "invalid_request",
            f"messages[{index}]: a user message needs non-empty content",
            param=f"messages[{index}].content",
        )
    return Turn(role, content or "")
