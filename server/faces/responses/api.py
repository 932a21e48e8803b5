"""The Responses face: ``POST /v1/responses`` (what Codex and the Responses SDKs speak).

Owns the route handlers, read top to bottom like the other faces': authenticate -> decode ->
(the stored ``previous_response_id``'s items) -> neutral ``Conversation`` -> ``complete()``
into a Responses sink (streamed or collected), which stores the finished response unless
``store`` is false (``state.responses``, shared by every replica, kept ``RESPONSES_TTL``
seconds; 0 stores nothing). ``GET``/``DELETE /v1/responses/{id}`` read and remove a stored
one. Errors have the OpenAI shape.
"""

from typing import Any

import msgspec
from loguru import logger
from redis.exceptions import RedisError

from server.core.chat import Conversation
from server.core.errors import GatewayError
from server.faces.responses.convert import to_conversation
from server.faces.responses.render import (
    ResponsesResult,
    ResponsesStream,
    new_response_id,
    response_head,
)
from server.faces.responses.tools import Offered
from server.faces.responses.wire import InputItem, ResponsesRequest, decode_responses_request
from server.web.completion_handler import CompletionHandler
from server.web.handler import ApiHandler, api
from state.responses import ResponseStore, Stored

__all__ = ["OneResponse", "Responses"]


def _text_format(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text is not None else None
    if fmt is None:
        return {"type": "text"}
    return {k: v for k, v in msgspec.structs.asdict(fmt).items() if v is not None}


def _head(
    req: ResponsesRequest,
    response_id: str,
    conv: Conversation,
    store: bool,
    offered: dict[str, Offered],
) -> dict[str, Any]:
    # The tools offered, echoed as the client gave them (a namespace with its members).
    tools = [
        msgspec.to_builtins(t)
        for t in req.tools or []
        if t.type == "namespace" or (t.type in ("function", "custom") and t.name in offered)
    ]
    choice: object = conv.tool_choice
    if conv.tool_choice.startswith("function:"):
        name = conv.tool_choice.removeprefix("function:")
        choice = {"type": offered[name].kind if name in offered else "function", "name": name}
    reasoning = req.reasoning
    return response_head(
        response_id,
        req.model,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        parallel_tool_calls=conv.parallel_tool_calls,
        reasoning={
            "effort": reasoning.effort if reasoning else None,
            "summary": reasoning.summary if reasoning else None,
        },
        temperature=req.temperature,
        top_p=req.top_p,
        text_format=_text_format(req),
        tool_choice=choice,
        tools=tools,
        user=req.user,
        metadata=req.metadata or {},
        store=store,
        previous_response_id=req.previous_response_id,
    )


class StoredResponses(ApiHandler):
    def store(self) -> ResponseStore | None:
        services = self.services
        ttl = services.settings.responses_ttl
        return ResponseStore(services.redis, services.keys, ttl) if ttl > 0 else None

    async def stored(self, response_id: str, param: str | None = None) -> Stored:
        store = self.store()
        if store is None:
            raise GatewayError(
                "invalid_request" if param else "not_found",
                f"no response '{response_id[:64]}': this gateway stores no responses"
                " (RESPONSES_TTL=0); send the whole conversation in 'input'",
                param=param,
            )
        try:
            found = await store.load(response_id)
        except RedisError as exc:
            raise GatewayError("state_unavailable", str(exc)) from None
        if found is None:
            raise GatewayError(
                "not_found",
                f"no response '{response_id[:64]}': it was not stored, was deleted, or"
                f" expired (responses are kept {store.ttl:g} s)",
                param=param,
            )
        return found


class Responses(CompletionHandler, StoredResponses):
    route = "responses"

    @api
    async def post(self) -> None:
        self.authenticate()
        req = decode_responses_request(self.request.body)
        self.model_name = req.model
        history: list[InputItem] = []
        if req.previous_response_id:
            earlier = await self.stored(req.previous_response_id, "previous_response_id")
            history = msgspec.convert(earlier.items, list[InputItem])
        tool_support = self.tool_support(asked=bool(req.tools))
        model = await self.find_model(req.model)
        converted = to_conversation(req, self.request_id, tool_support, history, model)
        conv = converted.conv
        if converted.skipped_tools:
            skipped = ", ".join(sorted(set(converted.skipped_tools)))
            # Codex always sends built-in tools (web_search, namespace): not refused, said.
            self.set_header("X-Gateway-Tools", f"not offered: {skipped}")
            logger.info("{} tools not offered (not function tools): {}", self.request_id, skipped)
        store = self.store() if req.store is not False else None
        head = _head(req, new_response_id(), conv, store is not None, converted.offered)
        earlier_items = [msgspec.to_builtins(item) for item in history]

        async def keep(response: dict[str, Any]) -> bool:
            items = [*earlier_items, *converted.items, *response["output"]]
            try:
                await store.save(response, items)  # type: ignore[union-attr]
            except RedisError as exc:
                logger.warning("{} response not stored: {}", self.request_id, exc)
                return False
            return True

        show = conv.thinking is not False
        sink_type = ResponsesStream if req.stream else ResponsesResult
        kept = keep if store is not None else None
        sink = sink_type(self, head, show, kept, conv.search, converted.offered)
        await self.complete(conv, sink)


class OneResponse(StoredResponses):
    route = "responses"

    @api
    async def get(self, response_id: str) -> None:
        self.authenticate()
        self.write((await self.stored(response_id)).response)

    @api
    async def delete(self, response_id: str) -> None:
        self.authenticate()
        store = self.store()
        try:
            deleted = store is not None and await store.delete(response_id)
        except RedisError as exc:
            raise GatewayError("state_unavailable", str(exc)) from None
        if not deleted:
            await self.stored(response_id)  # raises the 404 that says why
        self.write({"id": response_id, "object": "response.deleted", "deleted": True})
