"""The Responses face: ``POST /v1/responses`` (what Codex and the Responses SDKs speak).

Owns the route handlers, read top to bottom like the other faces': authenticate -> decode ->
neutral ``Conversation`` -> ``complete()`` into a Responses sink (streamed or collected).
Errors have the OpenAI shape. The gateway stores no responses, so ``GET``/``DELETE
/v1/responses/{id}`` answer 404 saying so (``store`` is accepted and answered as false).
"""

import msgspec
from loguru import logger

from server.core.errors import GatewayError
from server.faces.responses.convert import to_conversation
from server.faces.responses.render import (
    ResponsesResult,
    ResponsesStream,
    new_response_id,
    response_head,
)
from server.faces.responses.wire import ResponsesRequest, decode_responses_request
from server.web.handler import ApiHandler, api

__all__ = ["OneResponse", "Responses"]


def _text_format(req: ResponsesRequest) -> dict:
    fmt = req.text.format if req.text is not None else None
    if fmt is None:
        return {"type": "text"}
    return {k: v for k, v in msgspec.structs.asdict(fmt).items() if v is not None}


def _head(req: ResponsesRequest, response_id: str, conv) -> dict:
    tools = [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
            "strict": False,
        }
        for t in conv.tools
    ]
    choice: object = conv.tool_choice
    if conv.tool_choice.startswith("function:"):
        choice = {"type": "function", "name": conv.tool_choice.removeprefix("function:")}
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
    )


class Responses(ApiHandler):
    route = "responses"
    admits = True  # runs a completion: an issued key's limits are checked with it

    @api
    async def post(self) -> None:
        self.authenticate()
        req = decode_responses_request(self.request.body)
        self.model_name = req.model
        tool_support = self.tool_support(asked=bool(req.tools))
        converted = to_conversation(req, self.request_id, tool_support)
        conv = converted.conv
        if converted.skipped_tools:
            skipped = ", ".join(sorted(set(converted.skipped_tools)))
            # Codex always sends built-in tools (web_search, namespace): not refused, said.
            self.set_header("X-Gateway-Tools", f"not offered: {skipped}")
            logger.info("{} tools not offered (not function tools): {}", self.request_id, skipped)
        head = _head(req, new_response_id(), conv)
        show = conv.thinking is not False
        if req.stream:
            sink = ResponsesStream(self, head, show)
        else:
            sink = ResponsesResult(self, head, show)
        await self.complete(conv, sink)


class OneResponse(ApiHandler):
    route = "responses"

    @api
    async def get(self, response_id: str) -> None:
        self.authenticate()
        raise GatewayError(
            "not_found",
            f"no response '{response_id[:64]}': this gateway stores no responses"
            " (every response is answered as store: false)",
        )

    delete = get
