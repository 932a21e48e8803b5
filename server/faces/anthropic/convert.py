"""From a decoded Anthropic Messages request to the neutral ``Conversation``.

Owns ``to_conversation``: the model (Claude names map to the rows ``CLAUDE_*_MODEL`` choose),
``system`` and messages to turns (``tool_use`` blocks become the assistant's tool calls,
``tool_result`` blocks become tool turns, earlier ``thinking`` blocks are not sent back),
tools and ``tool_choice`` (auto/any/none, ``disable_parallel_tool_use``; ``tool`` naming one
tool is structured output: its input_schema's, answered as a ``tool_use``; the
``web_search_*`` server tool switches the upstream's search on, ``web_fetch_*`` is a 400),
``thinking``
(``budget_tokens`` and ``output_config.effort`` become an effort level), ``stop_sequences``.
``image`` blocks (base64 or url source, in user messages and tool results) become the turn's
images (``server/core/images.py``); documents are refused with a 400 naming the block.
``system`` messages among the messages (Claude Code sends one) join the system turn; the
``x-anthropic-billing-header: ...`` line Claude Code puts first in its system prompt is
dropped (it is for Anthropic's billing, and changes every request).
Inside a ``tool_result`` any block type is rendered as text: a ``tool_reference`` (what Claude
Code's ToolSearch answers) names a deferred tool, which is then offered like the others.
``max_tokens`` goes to the upstream's ``params`` as on the OpenAI face (the README says it is
applied; a ceiling such as Claude Code's is passed as it is).
"""

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from server.core.chat import Conversation, Image, OutputFormat, ToolCall, ToolSpec, Turn
from server.core.effort import from_budget
from server.core.errors import GatewayError
from server.core.models import Model, require_model
from server.emulation.structured import schema_problem
from server.faces.anthropic.wire import (
    Block,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    ServerToolUseBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    WebSearchResultBlock,
)

__all__ = ["to_conversation"]

_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def to_conversation(
    req: MessagesRequest,
    request_id: str,
    claude: dict[str, str],
    tool_support: bool = True,
    model: Model | None = None,
) -> Conversation:
    model = model or require_model(req.model, claude)  # the handler passes the live row
    system = [_system_text(req.system)] if req.system else []
    turns: list[Turn] = []
    referenced: set[str] = set()  # deferred tools a tool_reference has loaded
    for index, message in enumerate(req.messages):
        if message.role == "system":  # folded into the one system turn, in order
            system.append(_system_text(message.content))
            continue
        turns += _turns(index, message.role, message.content, referenced)
    if any(system):
        turns.insert(0, Turn("system", "\n\n".join(text for text in system if text)))
    thinking = effort = None
    if req.thinking is not None:
        thinking = req.thinking.type != "disabled"
        if req.thinking.budget_tokens:
            effort = from_budget(req.thinking.budget_tokens)
    # output_config.effort picks the upstream level where the model takes one; it does not
    # switch thinking elsewhere (Claude Code sends it on every turn; `thinking` decides).
    if req.output_config is not None and req.output_config.effort:
        effort = req.output_config.effort
    conv = Conversation(
        model=model,
        turns=turns,
        temperature=req.temperature,
        top_p=req.top_p,
        thinking=thinking,
        effort=effort,
        request_id=request_id,
        stop=list(req.stop_sequences or []),
        max_tokens=req.max_tokens,
        captcha=req.zai_captcha or "",
        thread=_user_id(
            req.metadata
        ),  # the conversation's name (ZAI_CHATS=continue), hashed before use
    )
    if tool_support and req.tools:
        _tools(req, conv, referenced)
    return conv


def _tools(req: MessagesRequest, conv: Conversation, referenced: set[str]) -> None:
    conv.tools = [
        ToolSpec(t.name, t.description, t.input_schema)
        for t in req.tools or []
        if t.type in (None, "custom") and (not t.defer_loading or t.name in referenced)
    ]
    for index, tool in enumerate(req.tools or []):
        if tool.type is not None and tool.type != "custom":
            _server_tool(index, tool.type, conv)
    choice = req.tool_choice
    if choice is None:
        return
    searching = {t.name for t in req.tools or [] if (t.type or "").startswith("web_search_")}
    if choice.type == "tool" and choice.name in searching:
        return  # forcing the search (Claude Code's WebSearch does): the upstream searches
    if choice.type == "tool":
        forced = next((t for t in conv.tools if t.name == choice.name), None)
        if forced is None:
            raise GatewayError(
                "invalid_request",
                f"tool_choice names '{choice.name}', which is not among the tools",
                param="tool_choice.name",
            )
        # One tool forced is how Anthropic clients ask for structured output: its input is
        # emulated as structured output (schema in the prompt, answer validated, retried
        # once) and answered as a tool_use of that tool; no tool protocol is needed.
        problem = schema_problem(forced.parameters)
        if problem is not None:
            index = next(i for i, t in enumerate(req.tools or []) if t.name == choice.name)
            raise GatewayError(
                "invalid_request",
                f"tools.{index}.input_schema is not a valid JSON Schema: {problem}",
                param=f"tools.{index}.input_schema",
            )
        conv.output_format = OutputFormat(
            forced.name, forced.parameters, tool=forced.name, description=forced.description
        )
        conv.tools = []
    else:
        conv.tool_choice = _CHOICE[choice.type]
    conv.parallel_tool_calls = not choice.disable_parallel_tool_use


def _server_tool(index: int, kind: str, conv: Conversation) -> None:
    """Anthropic's server tools: web search runs as the upstream's own search (answered as
    ``server_tool_use`` + ``web_search_tool_result`` blocks); web fetch is refused; others
    (code execution, editors) are not offered, as before."""
    where = f"tools.{index}"
    if kind.startswith("web_fetch_"):
        raise GatewayError(
            "invalid_request",
            f"{where}: the {kind} server tool is not supported: the upstream opens pages only"
            " inside its own search, so no fetched page can be returned; fetch on the client"
            " side (a client tool) instead",
            param=f"{where}.type",
        )
    if not kind.startswith("web_search_"):
        return
    if conv.tools:
        raise GatewayError(
            "invalid_request",
            f"{where}: the web_search server tool cannot be combined with client tools on"
            " this gateway (the upstream's search must be off while tools are emulated); ask"
            " for the search in a request of its own, as Claude Code's WebSearch does",
            param=f"{where}.type",
        )
    if not conv.model.can_search:
        raise GatewayError(
            "invalid_request",
            f"{where}: model {conv.model.id} has no web search upstream; use a model whose"
            " capabilities list search (GET /v1/models)",
            param=f"{where}.type",
        )
    conv.search = True


def _turns(
    index: int, role: str, content: str | Sequence[Block], referenced: set[str]
) -> list[Turn]:
    if isinstance(content, str):
        if role == "user" and not content:
            raise GatewayError(
                "invalid_request",
                f"messages.{index}.content: empty user text",
                param=f"messages.{index}.content",
            )
        return [Turn(role, content)]
    turns: list[Turn] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    images: list[Image] = []
    for j, block in enumerate(content):
        where = f"messages.{index}.content.{j}"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, msgspec.json.encode(block.input).decode()))
        elif isinstance(block, ToolResultBlock):
            text, shown = _result_text(block, where, referenced)
            turns.append(Turn("tool", text, shown, tool_call_id=block.tool_use_id))
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue  # the upstream keeps no thinking of earlier turns
        elif isinstance(block, ServerToolUseBlock):
            texts.append(f"(Searched the web for: {block.input.get('query', '')})")
        elif isinstance(block, WebSearchResultBlock):
            found = block.content if isinstance(block.content, list) else []
            texts.append(
                "\n".join(
                    f"- {r.get('title', '')}: {r.get('url', '')}"
                    for r in found
                    if isinstance(r, dict)
                )
            )
        elif isinstance(block, ImageBlock):
            if role != "user":
                raise GatewayError(
                    "invalid_request",
                    f"{where}: images are taken in user messages only",
                    param=where,
                )
            images.append(_image(block.source, where))
        elif isinstance(block, DocumentBlock):
            raise GatewayError(
                "invalid_request",
                f"{where}: document input is not supported by this gateway",
                param=where,
            )
    text = "\n\n".join(t for t in texts if t)
    if text or calls or images:
        turns.append(Turn(role, text, images, tool_calls=calls))
    elif role == "user" and not turns:
        raise GatewayError(
            "invalid_request",
            f"messages.{index}.content: no text",
            param=f"messages.{index}.content",
        )
    return turns


# Claude Code's first system block: a per-request line for Anthropic's billing (its 3 hex
# digits change every request), meaningless to GLM and a cache-breaker for the prompt.
_BILLING = re.compile(r"^x-anthropic-billing-header:[^\n]*(?:\n|$)", re.M)


def _system_text(content: str | Sequence[Block]) -> str:
    if isinstance(content, str):
        text = content
    else:
        text = "\n\n".join(b.text for b in content if isinstance(b, TextBlock))
    return _BILLING.sub("", text).strip() if "x-anthropic-billing-header:" in text else text


def _result_text(
    block: ToolResultBlock, where: str, referenced: set[str]
) -> tuple[str, list[Image]]:
    """A tool result's text, and its images (Claude Code's Read of a picture answers one)."""
    images: list[Image] = []
    if isinstance(block.content, str):
        text = block.content
    else:
        texts = []
        for k, part in enumerate(block.content):
            if part.get("type") == "image":
                images.append(_image(part.get("source"), f"{where}.content.{k}"))
            else:
                texts.append(_result_part(part, f"{where}.content.{k}", referenced))
        text = "\n".join(texts)
    return (f"[error] {text}" if block.is_error else text), images


def _image(source: Any, where: str) -> Image:
    """An image block's source: ``base64`` (data and media_type) or ``url``."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(data := source.get("data"), str):
        media = source.get("media_type")
        return Image(
            where, f"data:{media if isinstance(media, str) else 'image/png'};base64,{data}"
        )
    if kind == "url" and isinstance(url := source.get("url"), str):
        return Image(where, url)
    raise GatewayError(
        "invalid_request",
        f"{where}.source: an image source is base64 (data, media_type) or url (url)",
        param=f"{where}.source",
    )


def _result_part(part: dict[str, Any], where: str, referenced: set[str]) -> str:
    kind = part.get("type")
    if not isinstance(kind, str):
        raise GatewayError("invalid_request", f"{where}.type: a string is required", param=where)
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise GatewayError(
                "invalid_request", f"{where}.text: a string is required", param=f"{where}.text"
            )
        return text
    if kind == "document":
        raise GatewayError(
            "invalid_request",
            f"{where}: document input is not supported by this gateway",
            param=where,
        )
    if kind == "tool_reference" and isinstance(name := part.get("tool_name"), str):
        referenced.add(name)
        return f"Tool {name} is now loaded and can be called."
    # An unknown block: the model reads it as it came, minus the caching hint.
    rest = {k: v for k, v in part.items() if k not in ("type", "cache_control")}
    return f"[{kind}] {msgspec.json.encode(rest).decode()}"


def _user_id(metadata: dict[str, Any] | None) -> str:
    """``metadata.user_id``: Anthropic's end-user id; Claude Code sends one per session."""
    value = (metadata or {}).get("user_id")
    return value if isinstance(value, str) else ""
