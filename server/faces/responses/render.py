"""The Responses face's output: neutral sink calls rendered as Responses API bytes.

Owns ``ResponsesStream`` (the event sequence the SDKs and Codex parse, each event
``event: <type>`` + ``data: {..., "sequence_number": n}``: ``response.created``,
``response.in_progress``, then per output item ``response.output_item.added`` ... ``.done``
with, inside, ``response.reasoning_summary_part.added`` / ``reasoning_summary_text.delta`` /
``.done`` / ``reasoning_summary_part.done`` for the thinking, ``response.content_part.added`` /
``output_text.delta`` / ``.done`` / ``content_part.done`` for the answer, and
``response.function_call_arguments.delta`` / ``.done`` for a function call
(``response.custom_tool_call_input.delta`` / ``.done`` for a custom tool's); at the end
``response.completed`` (or ``response.incomplete`` when the output was cut) with usage, or
``response.failed`` after an ``error`` event when it fails midway) and ``ResponsesResult``
(one ``response`` object); both hand the finished response to ``keep`` (the store) first when
it is to be stored. The thinking is a ``reasoning`` item whose one summary part holds
it: Codex and the SDKs show summaries, and the upstream has no separate summary. With the
``web_search`` tool the upstream's searches are ``web_search_call`` items (``action.query``,
``action.sources``) before the message (streamed when the core says the search ran, before
the first text: ``response.web_search_call.in_progress`` / ``.searching`` / ``.completed``).
"""

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from server.core.chat import CollectingSink, Ending, ToolCall, Usage, WebSearch, Writer
from server.core.errors import GatewayError
from server.faces.responses.tools import Offered, call_item
from server.ids import hex_id

__all__ = ["Keep", "ResponsesResult", "ResponsesStream", "new_response_id", "response_head"]

# Stores the finished response (``store``) before the client hears it ended, so a follow-up
# with ``previous_response_id`` never races the write; False: not stored after all.
Keep = Callable[[dict[str, Any]], Awaitable[bool]]

_encode = msgspec.json.encode
# finish reason -> (status, incomplete_details.reason)
_STATUS = {
    "stop": ("completed", None),
    "stop_sequence": ("completed", None),
    "tool_calls": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


def new_response_id() -> str:
    return f"resp_{hex_id(32)}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{hex_id(32)}"


def _usage(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage()
    return {
        "input_tokens": usage.prompt_tokens,
        # cache_write_tokens: required by the SDK's ResponseUsage; the upstream reports none
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": summary, "encrypted_content": None}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if text is not None else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _search_item(search: WebSearch, status: str = "completed") -> dict[str, Any]:
    sources = [{"type": "url", "url": url} for _, url in search.results]
    action = {"type": "search", "query": search.query, "sources": sources}
    return {"type": "web_search_call", "id": _item_id("ws"), "status": status, "action": action}


def _ended(
    head: dict[str, Any], reason: str, usage: Usage | None, output: list[dict[str, Any]]
) -> dict[str, Any]:
    status, why = _STATUS.get(reason, ("completed", None))
    return {
        **head,
        "status": status,
        "incomplete_details": {"reason": why} if why else None,
        "output": output,
        "usage": _usage(usage),
    }


async def _kept(keep: Keep | None, response: dict[str, Any]) -> dict[str, Any]:
    if keep is not None and response["store"]:
        response["store"] = await keep(response)
    return response


class ResponsesStream:
    """Streams one response as Responses API server-sent events."""

    def __init__(
        self,
        out: Writer,
        head: dict[str, Any],
        show_reasoning: bool = True,
        keep: Keep | None = None,
        search: bool = False,
        offered: dict[str, Offered] | None = None,
    ) -> None:
        self.out = out
        self.keep = keep
        self.offered = offered or {}  # model-facing tool name -> the client's tool
        self.head = head  # the response object's fields that do not change
        self.show_reasoning = show_reasoning
        # web_search asked: the message waits for its web_search_call items, sent by
        # ``searched`` before the first text, or at the end
        self.search_asked = self.search = search
        self.searches_sent = 0
        self.started = False
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.kind: str | None = None  # the open item: "reasoning" | "message" | None
        self.item_id = ""
        self.parts: list[str] = []

    def __repr__(self) -> str:
        return f"<ResponsesStream {self.head['id']} items={len(self.output)} open={self.kind}>"

    def _event(self, kind: str, fields: dict[str, Any]) -> None:
        body = _encode({"type": kind, **fields, "sequence_number": self.seq})
        self.seq += 1
        self.out.write(b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n")

    def _begin(self) -> None:
        self.started = True
        out = self.out
        out.set_header("Content-Type", "text/event-stream; charset=utf-8")
        out.set_header("Cache-Control", "no-cache")
        out.set_header("X-Accel-Buffering", "no")
        response = {**self.head, "status": "in_progress", "output": [], "usage": None}
        self._event("response.created", {"response": response})
        self._event("response.in_progress", {"response": response})

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": len(self.output)}

    def _open(self, kind: str) -> None:
        if self.kind == kind:
            return
        self._close()
        self.kind, self.parts = kind, []
        index = len(self.output)
        if kind == "reasoning":
            self.item_id = _item_id("rs")
            item = _reasoning_item(self.item_id, "")
            self._event("response.output_item.added", {"output_index": index, "item": item})
            part = {"type": "summary_text", "text": ""}
            self._event(
                "response.reasoning_summary_part.added",
                {**self._where(), "summary_index": 0, "part": part},
            )
        else:
            self.item_id = _item_id("msg")
            item = _message_item(self.item_id, None, "in_progress")
            self._event("response.output_item.added", {"output_index": index, "item": item})
            self._event(
                "response.content_part.added",
                {**self._where(), "content_index": 0, "part": _text_part("")},
            )

    def _close(self) -> None:
        if self.kind is None:
            return
        text, where = "".join(self.parts), self._where()
        if self.kind == "reasoning":
            self._event(
                "response.reasoning_summary_text.done", {**where, "summary_index": 0, "text": text}
            )
            part = {"type": "summary_text", "text": text}
            self._event(
                "response.reasoning_summary_part.done", {**where, "summary_index": 0, "part": part}
            )
            item = _reasoning_item(self.item_id, text)
        else:
            self._event(
                "response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
            )
            self._event(
                "response.content_part.done",
                {**where, "content_index": 0, "part": _text_part(text)},
            )
            item = _message_item(self.item_id, text)
        self._event(
            "response.output_item.done", {"output_index": where["output_index"], "item": item}
        )
        self.output.append(item)
        self.kind = None

    async def delta(self, reasoning: str, content: str) -> None:
        if not self.started:
            self._begin()
        if reasoning and self.show_reasoning:
            self._open("reasoning")
            self.parts.append(reasoning)
            self._event(
                "response.reasoning_summary_text.delta",
                {**self._where(), "summary_index": 0, "delta": reasoning},
            )
        if content and not self.search:
            self._text(content)
        await self.out.flush()

    def _text(self, content: str) -> None:
        self._open("message")
        self.parts.append(content)
        self._event(
            "response.output_text.delta",
            {**self._where(), "content_index": 0, "delta": content, "logprobs": []},
        )

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        """Before answer text: the searches not sent yet, then the message streams."""
        if not self.search_asked:
            return
        if not self.started:
            self._begin()
        self.search = False
        new = searches[self.searches_sent :]
        for search in new:
            self._search(search)
        self.searches_sent += len(new)
        await self.out.flush()

    def _search(self, search: WebSearch) -> None:
        self._close()
        index, item = len(self.output), _search_item(search, "in_progress")
        where = {"item_id": item["id"], "output_index": index}
        self._event("response.output_item.added", {"output_index": index, "item": item})
        for step in ("in_progress", "searching", "completed"):
            self._event(f"response.web_search_call.{step}", where)
        done = {**item, "status": "completed"}
        self._event("response.output_item.done", {"output_index": index, "item": done})
        self.output.append(done)

    async def tool_call(self, call: ToolCall) -> None:
        if not self.started:
            self._begin()
        self._close()
        index, item_id = len(self.output), hex_id(32)
        added = call_item(item_id, call, self.offered, "in_progress")
        self._event("response.output_item.added", {"output_index": index, "item": added})
        item = call_item(item_id, call, self.offered)
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "custom_tool_call":
            sent = item["input"]
            self._event("response.custom_tool_call_input.delta", {**where, "delta": sent})
            self._event("response.custom_tool_call_input.done", {**where, "input": sent})
        else:
            sent = item["arguments"]
            self._event("response.function_call_arguments.delta", {**where, "delta": sent})
            self._event(
                "response.function_call_arguments.done",
                {**where, "name": item["name"], "arguments": sent},
            )
        self._event("response.output_item.done", {"output_index": index, "item": item})
        self.output.append(item)
        await self.out.flush()

    async def finish(self, end: Ending) -> None:
        if not self.started:
            self._begin()
        for search in end.searches[self.searches_sent :]:
            self._search(search)
        if self.search and end.content:
            self._text(end.content)
        if not self.output and self.kind is None:
            self._open("message")  # an empty answer is still one (empty) message
        self._close()
        response = await _kept(self.keep, _ended(self.head, end.reason, end.usage, self.output))
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        self._event(kind, {"response": response})
        await self.out.flush()

    async def fail(self, error: GatewayError) -> None:
        if not self.started:
            self.out.send_gateway_error(error)
            return
        # The SDKs raise on an "error" event; Codex reads response.failed's error.
        detail = {"code": error.kind, "message": error.message}
        self._event("error", {**detail, "param": error.param})
        failed = {**self.head, "status": "failed", "error": detail, "output": self.output}
        self._event("response.failed", {"response": {**failed, "usage": None}})
        await self.out.flush()


class ResponsesResult(CollectingSink):
    """Collects one response and writes the ``response`` object at the end."""

    def __init__(
        self,
        out: Writer,
        head: dict[str, Any],
        show_reasoning: bool = True,
        keep: Keep | None = None,
        search: bool = False,
        offered: dict[str, Offered] | None = None,
    ) -> None:
        super().__init__(out)
        self.keep = keep
        self.offered = offered or {}
        self.head = head
        self.show_reasoning = show_reasoning
        self.search = search

    def __repr__(self) -> str:
        return f"<ResponsesResult {self.head['id']} calls={len(self.calls)}>"

    async def finish(self, end: Ending) -> None:
        output: list[dict[str, Any]] = []
        if end.reasoning and self.show_reasoning:
            output.append(_reasoning_item(_item_id("rs"), end.reasoning))
        if self.search:
            output += [_search_item(search) for search in end.searches]
        if end.content or not self.calls:
            output.append(_message_item(_item_id("msg"), end.content))
        output += [call_item(hex_id(32), call, self.offered) for call in self.calls]
        self.out.set_header("Content-Type", "application/json")
        response = await _kept(self.keep, _ended(self.head, end.reason, end.usage, output))
        self.out.write(_encode(response))


def response_head(
    response_id: str,
    model: str,
    *,
    instructions: str | None,
    max_output_tokens: int | None,
    parallel_tool_calls: bool,
    reasoning: dict[str, Any],
    temperature: float | None,
    top_p: float | None,
    text_format: dict[str, Any],
    tool_choice: object,
    tools: list[dict[str, Any]],
    user: str | None,
    metadata: dict[str, Any],
    store: bool = False,
    previous_response_id: str | None = None,
) -> dict[str, Any]:
    """The fields of the response object that are known before the answer (the request's
    settings echoed, as the SDKs' ``Response`` model has them)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": parallel_tool_calls,
        "previous_response_id": previous_response_id,
        "reasoning": reasoning,
        "store": store,
        "temperature": temperature,
        "text": {"format": text_format},
        "tool_choice": tool_choice,
        "tools": tools,
        "top_p": top_p,
        "truncation": "disabled",
        "usage": None,
        "user": user,
        "metadata": metadata,
    }
