"""The Anthropic face's output: neutral sink calls rendered as Messages API bytes.

Owns ``AnthropicStream`` (the exact event sequence: ``message_start``, then per block
``content_block_start`` / ``content_block_delta`` (``thinking_delta`` + ``signature_delta``,
``text_delta``, ``input_json_delta``) / ``content_block_stop``, then ``message_delta`` with
``stop_reason`` and usage, ``message_stop``; ``ping`` while the upstream is silent; an
``error`` event if it fails after it began), ``AnthropicResult`` (one ``message`` object) and
``error_body`` (``{"type": "error", "error": {...}}``, its type chosen by status).
With the web_search server tool the upstream's searches come first as ``server_tool_use`` +
``web_search_tool_result`` blocks (``search_blocks``), sent when the core says the search
ran (``searched``, before the answer's first text), then the text streams; a search that
came later is sent at the end; ``usage.server_tool_use`` counts them.
Thinking blocks carry a signature the gateway makes (the upstream has none): an opaque
digest of the thinking, so clients that require the field are satisfied.
"""

import asyncio
import base64
import hashlib
from typing import Any

import msgspec
from tornado.iostream import StreamClosedError

from server.core.chat import CollectingSink, Ending, ToolCall, Usage, WebSearch, Writer
from server.core.errors import GatewayError
from server.ids import hex_id

__all__ = ["AnthropicResult", "AnthropicStream", "error_body"]

_encode = msgspec.json.encode
_STOP = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
    "stop_sequence": "stop_sequence",
}
_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",  # no conflict type in Anthropic's list: the closest
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
PING_EVERY = 10.0  # seconds of upstream silence before a ping keeps proxies and clients calm


def error_body(err: GatewayError) -> bytes:
    kind = _ERROR_TYPE.get(err.status, "api_error")
    return _encode({"type": "error", "error": {"type": kind, "message": err.message}})


def signature_of(thinking: str) -> str:
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def _usage(usage: Usage | None, searches: int | None = None) -> dict[str, Any]:
    usage = usage or Usage()
    out: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }
    if searches is not None:  # the web_search server tool was asked for
        out["server_tool_use"] = {"web_search_requests": searches, "web_fetch_requests": 0}
    return out


def search_blocks(searches: tuple[WebSearch, ...]) -> list[dict[str, Any]]:
    """The upstream's searches as Anthropic's blocks: each a ``server_tool_use`` of
    ``web_search`` with its query, then its ``web_search_tool_result``. A result's
    ``encrypted_content`` is opaque to clients (they send it back unread): here the source
    itself, encoded."""
    blocks: list[dict[str, Any]] = []
    for search in searches:
        tool_id = f"srvtoolu_{hex_id(24)}"
        blocks.append(
            {
                "type": "server_tool_use",
                "id": tool_id,
                "name": "web_search",
                "input": {"query": search.query},
            }
        )
        results = [
            {
                "type": "web_search_result",
                "title": title,
                "url": url,
                "encrypted_content": base64.b64encode(_encode([title, url])).decode(),
                "page_age": None,
            }
            for title, url in search.results
        ]
        blocks.append(
            {"type": "web_search_tool_result", "tool_use_id": tool_id, "content": results}
        )
    return blocks


def _message(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    usage: Usage | None,
    stop_reason: str | None,
    stop_sequence: str | None,
    searches: int | None = None,
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(usage, searches),
    }


class AnthropicStream:
    """Streams one completion as Messages API server-sent events."""

    def __init__(
        self,
        out: Writer,
        message_id: str,
        model: str,
        thinking: bool = True,
        search: bool = False,
    ) -> None:
        self.out = out
        self.message_id = message_id
        self.model = model
        self.show_thinking = thinking  # False: the client disabled it; drop what comes anyway
        # web_search asked: the answer's text waits for the search blocks (Anthropic's
        # order), sent by ``searched`` before the first text, or at the end
        self.search_asked = self.search = search
        self.searches_sent = 0  # search blocks already streamed (see ``searched``)
        self.started = False
        self.index = -1
        self.block: str | None = None  # type of the open block
        self.thinking: list[str] = []
        self._pinger: asyncio.Task[None] | None = None
        self._writes = 0  # content written so far (pings only fill silences)
        self._ended = False

    def __repr__(self) -> str:
        return f"<AnthropicStream {self.message_id} block={self.index}:{self.block}>"

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        self.out.write(b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n")

    def _begin(self) -> None:
        self.started = True
        out = self.out
        out.set_header("Content-Type", "text/event-stream; charset=utf-8")
        out.set_header("Cache-Control", "no-cache")
        out.set_header("X-Accel-Buffering", "no")
        message = _message(self.message_id, self.model, [], None, None, None)
        self._event("message_start", {"type": "message_start", "message": message})
        self._event("ping", {"type": "ping"})
        self._pinger = asyncio.ensure_future(self._ping())

    async def _ping(self) -> None:
        # A plain sleep loop with a flag: wait_for() on 3.11 can swallow the cancel that
        # arrives as its inner wait completes, and a ping after the end must never happen.
        while not self._ended:
            writes = self._writes
            await asyncio.sleep(PING_EVERY)
            if self._ended:
                return
            if writes == self._writes:
                try:
                    self._event("ping", {"type": "ping"})
                    await self.out.flush()
                except StreamClosedError:
                    return

    def close(self) -> None:
        """The request is over, however it ended: no more pings."""
        self._stop_pinging()

    def _open(self, block: dict[str, Any]) -> None:
        self._close()
        self.index += 1
        self.block = block["type"]
        self._event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def _close(self) -> None:
        if self.block is None:
            return
        if self.block == "thinking":
            delta = {"type": "signature_delta", "signature": signature_of("".join(self.thinking))}
            self._delta(delta)
        self._event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.block = None

    def _delta(self, delta: dict[str, Any]) -> None:
        self._event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    async def delta(self, reasoning: str, content: str) -> None:
        if not self.started:
            self._begin()
        if reasoning and self.show_thinking:
            if self.block != "thinking":
                self._open({"type": "thinking", "thinking": "", "signature": ""})
            self.thinking.append(reasoning)
            self._delta({"type": "thinking_delta", "thinking": reasoning})
        if content and not self.search:
            self._text(content)
        self._writes += 1
        await self.out.flush()

    def _text(self, content: str) -> None:
        if self.block != "text":
            self._open({"type": "text", "text": ""})
        self._delta({"type": "text_delta", "text": content})

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        """Before answer text: the blocks of the searches not sent yet, then the text
        streams (a text block open before a new search is closed: text, search, text)."""
        if not self.search_asked:
            return
        if not self.started:
            self._begin()
        self.search = False  # the text no longer waits
        new = searches[self.searches_sent :]
        for block in search_blocks(new):
            self._search_block(block)
        self.searches_sent += len(new)
        self._writes += 1
        await self.out.flush()

    async def tool_call(self, call: ToolCall) -> None:
        if not self.started:
            self._begin()
        self._open({"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": {}})
        self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        self._close()
        self._writes += 1
        await self.out.flush()

    async def finish(self, end: Ending) -> None:
        if not self.started:
            self._begin()
        self._stop_pinging()
        self._close()
        held = self.search  # no searched() call: the text waited for the search blocks
        for block in search_blocks(end.searches[self.searches_sent :]):
            self._search_block(block)
        if held and end.content:
            self._text(end.content)
        self._close()
        delta = {
            "stop_reason": _STOP.get(end.reason, "end_turn"),
            "stop_sequence": end.stop_sequence,
        }
        usage = _usage(end.usage, len(end.searches) if self.search_asked else None)
        self._event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        self._event("message_stop", {"type": "message_stop"})
        await self.out.flush()

    def _search_block(self, block: dict[str, Any]) -> None:
        """As Anthropic streams them: a server_tool_use opens with an empty input that one
        input_json_delta fills; a result block comes whole in its start event."""
        if block["type"] == "server_tool_use":
            self._open({**block, "input": {}})
            self._delta(
                {"type": "input_json_delta", "partial_json": _encode(block["input"]).decode()}
            )
        else:
            self._open(block)
        self._close()

    async def fail(self, error: GatewayError) -> None:
        self._stop_pinging()
        if not self.started:
            self.out.send_gateway_error(error)
            return
        self._event("error", msgspec.json.decode(error_body(error)))
        await self.out.flush()

    def _stop_pinging(self) -> None:
        self._ended = True
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None


class AnthropicResult(CollectingSink):
    """Collects one completion and writes a ``message`` object at the end."""

    def __init__(
        self,
        out: Writer,
        message_id: str,
        model: str,
        thinking: bool = True,
        search: bool = False,
    ) -> None:
        super().__init__(out)
        self.message_id = message_id
        self.model = model
        self.show_thinking = thinking
        self.search = search

    def __repr__(self) -> str:
        return f"<AnthropicResult {self.message_id} calls={len(self.calls)}>"

    async def finish(self, end: Ending) -> None:
        blocks: list[dict[str, Any]] = []
        reasoning, content = end.reasoning, end.content
        if reasoning and self.show_thinking:
            blocks.append(
                {"type": "thinking", "thinking": reasoning, "signature": signature_of(reasoning)}
            )
        if self.search:
            blocks += search_blocks(end.searches)
        if content:
            blocks.append({"type": "text", "text": content})
        blocks += [
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.name,
                "input": msgspec.json.decode(call.arguments),
            }
            for call in self.calls
        ]
        stop = _STOP.get(end.reason, "end_turn")
        searches = len(end.searches) if self.search else None
        message = _message(
            self.message_id, self.model, blocks, end.usage, stop, end.stop_sequence, searches
        )
        self.out.set_header("Content-Type", "application/json")
        self.out.write(_encode(message))


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")
