"""The Anthropic face: ``/v1/messages`` and ``/v1/messages/count_tokens``.

Owns the route handlers, read top to bottom like the OpenAI face's: authenticate
(``x-api-key`` or ``Authorization: Bearer``, the same keys) -> decode -> neutral
``Conversation`` -> ``complete()`` into an Anthropic sink. ``anthropic-version`` and
``anthropic-beta`` headers are accepted; errors are Anthropic-shaped. ``GET /v1/models`` and
``/v1/models/{id}`` asked with ``anthropic-version`` (what the Anthropic SDK always sends)
answer here, in Anthropic's ``ModelInfo`` shape (app.py routes them by that header).
"""

import time
from typing import Any

from server.core.chat import Sink
from server.core.errors import GatewayError
from server.core.models import Model
from server.core.token_estimate import estimate_conversation
from server.faces.anthropic.convert import to_conversation
from server.faces.anthropic.render import AnthropicResult, AnthropicStream, error_body
from server.faces.anthropic.wire import decode_messages_request
from server.ids import hex_id
from server.web.completion_handler import CompletionHandler
from server.web.handler import ApiHandler, api

__all__ = ["COUNT_TOKENS_MAX_BYTES", "CountTokens", "Messages", "ModelInfo", "ModelInfoList"]

COUNT_TOKENS_MAX_BYTES = 2 * 1024 * 1024  # ~500 k tokens of text: over 2x a 200 k context


class AnthropicHandler(ApiHandler):
    render_error = staticmethod(error_body)

    def claude_targets(self) -> dict[str, str]:
        settings = self.services.settings
        return {
            "opus": settings.claude_opus_model,
            "sonnet": settings.claude_sonnet_model,
            "haiku": settings.claude_haiku_model,
        }


class Messages(CompletionHandler, AnthropicHandler):
    route = "messages"

    @api
    async def post(self) -> None:
        self.authenticate()
        req = decode_messages_request(self.request.body)
        self.model_name = req.model
        tool_support = self.tool_support(asked=bool(req.tools))
        model = await self.find_model(req.model, self.claude_targets())
        conv = to_conversation(req, self.request_id, self.claude_targets(), tool_support, model)
        message_id = f"msg_{hex_id(24)}"
        # thinking: {"type": "disabled"} means no thinking blocks, even if the upstream thinks.
        show = conv.thinking is not False
        sink: Sink
        if req.stream:
            sink = AnthropicStream(self, message_id, req.model, show, conv.search)
        else:
            sink = AnthropicResult(self, message_id, req.model, show, conv.search)
        await self.complete(conv, sink)


class CountTokens(AnthropicHandler):
    route = "count_tokens"

    @api
    async def post(self) -> None:
        self.authenticate()
        if len(self.request.body) > COUNT_TOKENS_MAX_BYTES:
            # Counting is CPU on the loop (1.4 s for 7.5 MB): beyond any context, refuse it.
            raise GatewayError(
                "invalid_request",
                f"messages: count_tokens measures at most {COUNT_TOKENS_MAX_BYTES} bytes of"
                " request, more than any model's context",
                param="messages",
            )
        req = decode_messages_request(self.request.body, count_only=True)
        self.model_name = req.model
        model = await self.find_model(req.model, self.claude_targets())
        conv = to_conversation(req, self.request_id, self.claude_targets(), model=model)
        self.write({"input_tokens": estimate_conversation(conv)})


def _model_info(model: Model) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.created))
    return {
        "type": "model",
        "id": model.id,
        "display_name": model.id,
        "created_at": created,
        "capabilities": _capabilities(model),
        "requires_user_token": not model.guest,
    }


def _capabilities(model: Model) -> dict[str, Any]:
    # Anthropic's ModelCapabilities shape, for what the upstream tells.
    effort = {"supported": model.effort}
    return {
        "image_input": {"supported": model.vision},
        "thinking": {"supported": model.can_think},
        "effort": {**effort, **{level: effort for level in ("low", "medium", "high", "max")}},
    }


class ModelInfoList(AnthropicHandler):
    route = "models"

    @api
    async def get(self) -> None:
        self.authenticate()
        data = [_model_info(m) for m in (await self.model_table()).listed]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        self.write({"data": data, "has_more": False, "first_id": first, "last_id": last})


class ModelInfo(AnthropicHandler):
    route = "models"

    @api
    async def get(self, name: str) -> None:
        self.authenticate()
        self.write(_model_info(await self.find_model(name, self.claude_targets())))
