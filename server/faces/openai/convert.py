"""From a decoded OpenAI request to the neutral ``Conversation``.

Owns ``to_conversation``: the model looked up in the table (unknown -> 404 listing them all),
messages to turns (text parts joined by newlines; ``image_url`` parts, a data: URL or an
http(s) URL, become the turn's images: ``server/core/images.py``; ``n`` > 1 refused with a
400 naming the field), ``reasoning_effort`` to thinking and an effort level, and tools:
``tools``/``tool_choice``/``parallel_tool_calls`` and the legacy ``functions``/
``function_call``, with assistant ``tool_calls`` and ``tool``/``function`` results kept as
history. With ``TOOL_SUPPORT`` off the tools are dropped (the handler says so in a header
and the log). ``response_format`` (json_schema, json_object) becomes the ``OutputFormat``
that structured output emulates.
"""

from server.core.chat import Conversation, Image, ToolCall, ToolSpec, Turn
from server.core.effort import thinking_for
from server.core.errors import GatewayError
from server.core.models import Model, require_model
from server.emulation.structured import output_format
from server.emulation.tool_parse import new_call_id
from server.faces.openai.wire import ChatRequest, ImagePart, Message

__all__ = ["to_conversation"]

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


def to_conversation(
    req: ChatRequest, request_id: str, tool_support: bool = True, model: Model | None = None
) -> Conversation:
    model = model or require_model(req.model)  # the handler passes the live catalogue's row
    if req.n is not None and req.n > 1:
        raise GatewayError("invalid_request", "only n=1 is supported", param="n")
    turns = _turns(req.messages)
    thinking = None
    if req.reasoning_effort is not None:
        thinking = thinking_for(req.reasoning_effort)
    conv = Conversation(
        model=model,
        turns=turns,
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        thinking=thinking,
        effort=req.reasoning_effort,
        request_id=request_id,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
        captcha=req.zai_captcha or "",
        thread=req.user or "",  # the conversation's name (ZAI_CHATS=continue), hashed before use
    )
    if tool_support:
        _tools(req, conv)
    if req.response_format is not None:
        fmt, spec = req.response_format, req.response_format.json_schema
        name, schema = (spec.name, spec.schema) if spec is not None else ("", None)
        conv.output_format = output_format(fmt.type, name, schema, "response_format.json_schema")
    return conv


def _tools(req: ChatRequest, conv: Conversation) -> None:
    legacy = req.tools is None and req.functions is not None
    functions = [t.function for t in req.tools or []] if not legacy else req.functions or []
    conv.tools = [ToolSpec(f.name, f.description, f.parameters) for f in functions]
    choice = req.function_call if legacy else req.tool_choice
    param = "function_call" if legacy else "tool_choice"
    if choice is None or isinstance(choice, str):
        conv.tool_choice = choice or "auto"
    else:
        name = choice.name if legacy else choice.function.name  # type: ignore[union-attr]
        if name not in {t.name for t in conv.tools}:
            raise GatewayError(
                "invalid_request",
                f"{param} names '{name}', which is not among the tools",
                param=param,
            )
        conv.tool_choice = f"function:{name}"
    if conv.tool_choice != "none" and not conv.tools and choice is not None:
        raise GatewayError(
            "invalid_request", f"{param} is set but no tools were given", param=param
        )
    conv.parallel_tool_calls = req.parallel_tool_calls is not False and not legacy
    conv.extra["legacy_functions"] = legacy


def _turns(messages: list[Message]) -> list[Turn]:
    turns: list[Turn] = []
    for index, msg in enumerate(messages):
        role = _ROLES[msg.role]
        text, images = _content(index, msg)
        if images and role != "user":
            raise GatewayError(
                "invalid_request",
                f"messages[{index}]: images are taken in user messages only",
                param=images[0].param,
            )
        if role == "user" and not text and not images:
            raise GatewayError(
                "invalid_request",
                f"messages[{index}]: a user message needs non-empty content",
                param=f"messages[{index}].content",
            )
        turn = Turn(role, text, images)
        if msg.tool_calls:
            turn.tool_calls = [
                ToolCall(call.id or new_call_id(), call.function.name, call.function.arguments)
                for call in msg.tool_calls
            ]
        elif msg.function_call is not None:
            call = msg.function_call
            turn.tool_calls = [ToolCall(new_call_id(), call.name, call.arguments)]
        if role == "tool":
            turn.tool_call_id = msg.tool_call_id or ""
            turn.name = msg.name or ""  # else named from the call it answers
            if msg.role == "tool" and not msg.tool_call_id:
                raise GatewayError(
                    "invalid_request",
                    f"messages[{index}]: a tool message needs tool_call_id",
                    param=f"messages[{index}].tool_call_id",
                )
        if text or turn.tool_calls or role in ("user", "tool"):
            turns.append(turn)
    return turns


def _content(index: int, msg: Message) -> tuple[str, list[Image]]:
    """A message's text (parts joined by newlines) and its images, in order."""
    content = msg.content
    if not isinstance(content, list):
        return content or "", []
    parts, images = [], []
    for j, part in enumerate(content):
        if isinstance(part, ImagePart):
            images.append(_image(part, f"messages[{index}].content[{j}]"))
        else:
            parts.append(part.text)
    # Separate parts stay separate words ("hi" + "there" is not "hithere").
    return "\n".join(parts), images


def _image(part: ImagePart, where: str) -> Image:
    spec = part.image_url
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise GatewayError(
            "invalid_request", f"{where}.image_url.url: a URL is required", param=where
        )
    return Image(where, url)
