"""The OpenAI face's output: neutral sink calls rendered as Chat Completions bytes.

Owns ``OpenAIStream`` (``chat.completion.chunk`` SSE events, role first, ``reasoning_content``
deltas, ``finish_reason``, the ``stream_options.include_usage`` chunk, ``data: [DONE]``, and an
error event if the stream fails after it began) and ``OpenAIResult`` (one ``chat.completion``
object), plus ``error_body``. Chunks are built from bytes templates made once per request, so
each delta costs one JSON string encode; all deltas of one upstream read go out in one write.
"""

import time
from typing import Protocol

import msgspec

from server.chat import Usage
from server.errors import GatewayError

__all__ = ["OpenAIResult", "OpenAIStream", "Writer", "error_body"]

_encode = msgspec.json.encode


class Writer(Protocol):
    """What a sink needs from the HTTP response (a tornado RequestHandler is one)."""

    def set_status(self, status_code: int) -> None: ...

    def set_header(self, name: str, value: str) -> None: ...

    def write(self, chunk: bytes) -> None: ...

    def flush(self) -> object: ...

    def finish(self) -> object: ...

    def send_gateway_error(self, err: GatewayError) -> None:
        """An error answer (status, headers, body) before anything else was written."""


def error_body(err: GatewayError) -> bytes:
    return _encode(
        {
            "error": {
                "message": err.message,
                "type": err.rule.type,
                "param": err.param,
                "code": err.kind,
            }
        }
    )


def _usage(usage: Usage | None) -> dict:
    usage = usage or Usage()
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class OpenAIStream:
    """Streams one completion as ``chat.completion.chunk`` events."""

    def __init__(self, out: Writer, completion_id: str, model: str, include_usage: bool) -> None:
        self.out = out
        self.started = False
        self.include_usage = include_usage
        self.completion_id = completion_id
        self.created = int(time.time())
        self.model = model
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
        return f"<OpenAIStream {self.completion_id} started={self.started}>"

    def _begin(self) -> None:
        self.started = True
        out = self.out
        out.set_header("Content-Type", "text/event-stream; charset=utf-8")
        out.set_header("Cache-Control", "no-cache")
        out.set_header("X-Accel-Buffering", "no")
        out.write(self._head + b'"role":"assistant","content":""' + self._tail)

    async def delta(self, reasoning: str, content: str) -> None:
        if not self.started:
            self._begin()
        if reasoning:
            self.out.write(self._head + b'"reasoning_content":' + _encode(reasoning) + self._tail)
        if content:
            self.out.write(self._head + b'"content":' + _encode(content) + self._tail)
        await self.out.flush()

    async def finish(self, reason: str, usage: Usage | None, reasoning: str, content: str) -> None:
        if not self.started:
            self._begin()
        last = self._head + b"}," + _encode({"logprobs": None, "finish_reason": reason})[1:-1]
        self.out.write(
            last + b"}]" + self._tail[len(b'},"logprobs":null,"finish_reason":null}]') :]
        )
        if self.include_usage:
            chunk = {
                "id": self.completion_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": _usage(usage),
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


class OpenAIResult:
    """Collects one completion and writes a ``chat.completion`` object at the end."""

    started = False

    def __init__(self, out: Writer, completion_id: str, model: str) -> None:
        self.out = out
        self.completion_id = completion_id
        self.model = model

    def __repr__(self) -> str:
        return f"<OpenAIResult {self.completion_id}>"

    async def delta(self, reasoning: str, content: str) -> None:
        return None

    async def finish(self, reason: str, usage: Usage | None, reasoning: str, content: str) -> None:
        message: dict = {"role": "assistant", "content": content, "refusal": None}
        if reasoning:
            message["reasoning_content"] = reasoning
        body = {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            ],
            "usage": _usage(usage),
        }
        self.out.set_header("Content-Type", "application/json")
        self.out.write(_encode(body))

    async def fail(self, error: GatewayError) -> None:
        self.out.send_gateway_error(error)
