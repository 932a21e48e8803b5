"""The response shapes of the OpenAI face, as msgspec Structs, for the API document.

Owns the Structs that describe what ``server.faces.openai.render`` writes (which builds bytes from
templates on the hot path). Tests decode real responses with these types, so the document
cannot drift from what is served.
"""

from typing import Literal

from msgspec import Struct

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ErrorBody",
    "ModelList",
    "ModelObject",
]


class PromptDetails(Struct):
    cached_tokens: int = 0


class UsageOut(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails | None = None


class FunctionOut(Struct):
    name: str
    arguments: str  # a JSON object, encoded


class ToolCallOut(Struct):
    id: str
    function: FunctionOut
    type: Literal["function"] = "function"


class MessageOut(Struct):
    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionOut | None = None


class Choice(Struct):
    index: int
    message: MessageOut
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
    logprobs: None = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None


class FunctionDelta(Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Struct):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class Delta(Struct):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionDelta | None = None


class ChunkChoice(Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(Struct):
    """One ``data:`` event of a stream (the stream ends with ``data: [DONE]``)."""

    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: str | None = None
    usage: UsageOut | None = None


class ModelCapabilities(Struct):
    vision: bool = False
    thinking: bool = True
    search: bool = True
    reasoning_effort: list[str] = []  # the upstream levels it takes: high, max


class ModelObject(Struct):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"
    capabilities: ModelCapabilities | None = None
    requires_user_token: bool = False  # guests may not use it: served by pooled user tokens


class ModelList(Struct):
    data: list[ModelObject]
    object: Literal["list"] = "list"


class ErrorDetail(Struct):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorBody(Struct):
    error: ErrorDetail
