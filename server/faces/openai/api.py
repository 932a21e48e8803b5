"""The OpenAI face: ``/v1/chat/completions`` and ``/v1/models``.

Owns the route handlers. Each reads top to bottom: authenticate -> decode and validate ->
neutral ``Conversation`` -> ``complete()`` into an OpenAI sink (streamed or collected).
"""

from typing import Any

from server.core.chat import Sink
from server.core.models import Model, capabilities
from server.faces.openai.convert import to_conversation
from server.faces.openai.render import OpenAIResult, OpenAIStream
from server.faces.openai.wire import decode_chat_request
from server.ids import hex_id
from server.web.completion_handler import CompletionHandler
from server.web.handler import ApiHandler, api

__all__ = ["ChatCompletions", "ModelList", "OneModel"]


class ChatCompletions(CompletionHandler):
    route = "chat_completions"

    @api
    async def post(self) -> None:
        self.authenticate()
        req = decode_chat_request(self.request.body)
        self.model_name = req.model
        tool_support = self.tool_support(asked=bool(req.tools or req.functions))
        model = await self.find_model(req.model)
        conv = to_conversation(req, self.request_id, tool_support, model)
        completion_id = f"chatcmpl-{hex_id(32)}"
        legacy = bool(conv.extra.get("legacy_functions"))
        sink: Sink
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            sink = OpenAIStream(self, completion_id, conv.model.id, include_usage, legacy)
        else:
            sink = OpenAIResult(self, completion_id, conv.model.id, legacy)
        await self.complete(conv, sink)


def _model_object(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "z.ai",
        "capabilities": capabilities(model),
        "requires_user_token": not model.guest,
    }


class ModelList(ApiHandler):
    route = "models"

    @api
    async def get(self) -> None:
        self.authenticate()
        table = await self.model_table()
        self.write({"object": "list", "data": [_model_object(m) for m in table.listed]})


class OneModel(ApiHandler):
    route = "models"

    @api
    async def get(self, name: str) -> None:
        self.authenticate()
        self.write(_model_object(await self.find_model(name)))
