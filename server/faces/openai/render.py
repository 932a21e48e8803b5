"""The OpenAI face's output: neutral sink calls rendered as Chat Completions bytes.

Owns ``OpenAIStream`` (``chat.completion.chunk`` SSE events: role first, ``reasoning_content``
and ``content`` deltas, ``tool_calls`` deltas (index, id and name first, then the arguments),
``finish_reason``, the ``stream_options.include_usage`` chunk, ``data: [DONE]``, and an error
event if the stream fails after it began), ``OpenAIResult`` (one ``chat.completion``), and
``error_body``. Legacy ``functions`` requests get ``function_call`` instead of ``tool_calls``.
Chunks are built from bytes templates made once per request, so a delta costs one JSON
string encode; all deltas of one upstream read go out in one write.
"""

import time
from typing import Any

import msgspec

from server.core.chat import CollectingSink, Ending, ToolCall, Usage, WebSearch, Writer
from server.core.errors import GatewayError
from server.web.errors import error_body

__all__ = ["OpenAIResult", "OpenAIStream", "error_body"]

_encode = msgspec.json.encode
_LEGACY_REASON = {"tool_calls": "function_call"}
_REASON = {"stop_sequence": "stop"}  # OpenAI says "stop" for a stop sequence too


def _usage(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage()
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _call_object(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


class OpenAIStream:
    """Streams one completion as ``chat.completion.chunk`` events."""

    def __init__(
        self,
        out: Writer,
        completion_id: str,
        model: str,
        include_usage: bool,
        legacy_functions: bool = False,
    ) -> None:
        self.out = out
        self.started = False
        self.include_usage = include_usage
        self.legacy = legacy_functions
        self.completion_id = completion_id
        self.created = int(time.time())
        self.model = model
        self.calls = 0
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "system_fingerprint": None,
        }
        # data: {"id":..,"choices":[{"index":0,"delta":{ <fields> },"logprobs":null,..}]}\n\n
        self._head = b"data: " + _encode(head)[:-1] + b',"choices":[{"index":0,"delta":{'
        self._end = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._tail = b'},"logprobs":null,"finish_reason":null}]' + self._end

    def __repr__(self) -> str:
        return f"<OpenAIStream {self.completion_id} started={self.started} calls={self.calls}>"

    def _begin(self) -> None:
        self.started = True
        out = self.out
        out.set_header("Content-Type", "text/event-stream; charset=utf-8")
        out.set_header("Cache-Control", "no-cache")
        out.set_header("X-Accel-Buffering", "no")
        out.write(self._head + b'"role":"assistant","content":""' + self._tail)

    def _chunk(self, fields: bytes) -> None:
        self.out.write(self._head + fields + self._tail)

    async def delta(self, reasoning: str, content: str) -> None:
        if not self.started:
            self._begin()
        if reasoning:
            self._chunk(b'"reasoning_content":' + _encode(reasoning))
        if content:
            self._chunk(b'"content":' + _encode(content))
        await self.out.flush()

    async def tool_call(self, call: ToolCall) -> None:
        if not self.started:
            self._begin()
        if self.legacy:
            self._chunk(b'"function_call":' + _encode({"name": call.name, "arguments": ""}))
            self._chunk(b'"function_call":' + _encode({"arguments": call.arguments}))
        else:
            first = {
                "index": self.calls,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            rest = {"index": self.calls, "function": {"arguments": call.arguments}}
            self._chunk(b'"tool_calls":' + _encode([first]))
            self._chunk(b'"tool_calls":' + _encode([rest]))
        self.calls += 1
        await self.out.flush()

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        return None  # Chat Completions has no search blocks (links are in the text)

    async def finish(self, end: Ending) -> None:
        reason = _REASON.get(end.reason, end.reason)
        if not self.started:
            self._begin()
        if self.legacy:
            reason = _LEGACY_REASON.get(reason, reason)
        self.out.write(
            self._head + b'},"logprobs":null,"finish_reason":' + _encode(reason) + b"}]" + self._end
        )
        if self.include_usage:
            chunk = {
                "id": self.completion_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": _usage(end.usage),
            }
            self.out.write(b"data: " + _encode(chunk) + b"\n\n")
        self.out.write(b"data: [DONE]\n\n")
        await self.out.flush()

    async def fail(self, error: GatewayError) -> None:
        if not self.started:
            self.out.send_gateway_error(error)
            return
        # OpenAI SDKs raise an APIError on an event carrying "error".
        self.out.write(b"data: " + error_body(error) + b"\n\n")
        await self.out.flush()


class OpenAIResult(CollectingSink):
    """Collects one completion and writes a ``chat.completion`` object at the end."""

    def __init__(
        self, out: Writer, completion_id: str, model: str, legacy_functions: bool = False
    ) -> None:
        super().__init__(out)
        self.completion_id = completion_id
        self.model = model
        self.legacy = legacy_functions

    def __repr__(self) -> str:
        return f"<OpenAIResult {self.completion_id} calls={len(self.calls)}>"

    async def finish(self, end: Ending) -> None:
        reason = _REASON.get(end.reason, end.reason)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": end.content or None,
            "refusal": None,
        }
        if not self.calls:
            message["content"] = end.content
        elif self.legacy:
            first = self.calls[0]
            message["function_call"] = {"name": first.name, "arguments": first.arguments}
            reason = _LEGACY_REASON.get(reason, reason)
        else:
            message["tool_calls"] = [_call_object(call) for call in self.calls]
        if end.reasoning:
            message["reasoning_content"] = end.reasoning
        body = {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            ],
            "usage": _usage(end.usage),
        }
        self.out.set_header("Content-Type", "application/json")
        self.out.write(_encode(body))
