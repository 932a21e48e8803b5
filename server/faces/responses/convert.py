"""From a decoded Responses API request to the neutral ``Conversation``.

Owns ``to_conversation``. ``instructions`` and ``system``/``developer`` messages become the
system text; ``input`` (a string, or items) becomes turns: messages (their text parts joined
by newlines, ``input_image`` parts the turn's images), ``function_call`` items (the calls of
the assistant turn they follow) and
``function_call_output`` items (tool turns). ``reasoning`` items are accepted and not
forwarded (the upstream takes no earlier thinking). ``reasoning.effort`` turns thinking on
(off with ``none``/``minimal``), ``max_output_tokens`` goes to the upstream's params,
``text.format`` (json_schema, json_object) becomes the structured output ``OutputFormat``.
``previous_response_id``'s stored items (given as ``history``) come before the input;
``conversation`` and ``background`` are refused with a 400 naming the field (nothing keeps
conversations or runs answers in the background), so a client never silently loses its
history. ``function``, ``custom`` and ``namespace`` tools are emulated (their names and
items: ``server.faces.responses.tools``; ``Converted.offered`` says how to give each call back);
``web_search`` without other tools is the upstream's own search (``Conversation.search``); the
other tool types (``web_search`` beside function tools, ``file_search``, ...) are not offered
to the model and are listed in ``Converted.skipped_tools`` (the handler says so in a header
and the log) rather than refused, because Codex always sends some.
"""

from dataclasses import dataclass, field
from typing import Any

import msgspec

from server.core.chat import Conversation, Image, Turn
from server.core.effort import thinking_for
from server.core.errors import GatewayError
from server.core.models import Model, require_model
from server.emulation.structured import output_format
from server.emulation.tool_parse import new_call_id
from server.faces.responses.tools import Offered, call_from_item, model_name, offer
from server.faces.responses.wire import InputItem, Part, ResponsesRequest, ToolDef

__all__ = ["Converted", "to_conversation"]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "reasoning_text"}
_STATELESS = {
    "conversation": "this gateway keeps no conversations: send the whole conversation in 'input'",
    "background": "this gateway answers while the client waits: ask without background",
}


@dataclass(slots=True)
class Converted:
    conv: Conversation
    # the request's input, as items to store
    items: list[dict[str, Any]] = field(default_factory=list)
    skipped_tools: list[str] = field(default_factory=list)  # tool types not offered
    offered: dict[str, Offered] = field(default_factory=dict)  # model-facing name -> tool


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError("invalid_request", message, param=param)


def to_conversation(
    req: ResponsesRequest,
    request_id: str,
    tool_support: bool = True,
    history: list[InputItem] | None = None,
    model: Model | None = None,
) -> Converted:
    """``history``: the items of the stored ``previous_response_id`` (its input and output),
    which come before this request's input. ``model``: the live catalogue's row."""
    model = model or require_model(req.model)
    for name, why in _STATELESS.items():
        if getattr(req, name) not in (None, False):
            raise _bad(f"{name} is not supported: {why}", name)
    turns: list[Turn] = []
    if req.instructions:
        turns.append(Turn("system", req.instructions))
    if isinstance(req.input, str):
        if not req.input:
            raise _bad("input: a string input must not be empty", "input")
        items = [InputItem(role="user", content=[Part("input_text", req.input)])]
    else:
        items = req.input
    names: dict[str, str] = {}  # call id -> function name, for the outputs that follow
    _items(history or [], turns, names, "previous_response_id")
    _items(items, turns, names, "input")
    if not any(t.role in ("user", "tool") for t in turns):
        raise _bad("input: needs at least one user message or function_call_output", "input")
    thinking = effort = None
    if req.reasoning is not None and req.reasoning.effort is not None:
        effort = req.reasoning.effort  # the effort table: server/core/effort.py
        thinking = thinking_for(effort)
    conv = Conversation(
        model=model,
        turns=turns,
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_output_tokens,
        thinking=thinking,
        effort=effort,
        request_id=request_id,
        captcha=req.zai_captcha or "",
        thread=req.user or "",  # the conversation's name (ZAI_CHATS=continue), hashed before use
    )
    fmt = req.text.format if req.text is not None else None
    if fmt is not None:
        conv.output_format = output_format(fmt.type, fmt.name, fmt.schema, "text.format")
    out = Converted(conv, [msgspec.to_builtins(item) for item in items])
    if tool_support:
        _tools(req, out)
    return out


def _tools(req: ResponsesRequest, out: Converted) -> None:
    conv = out.conv
    searching = False
    for index, tool in enumerate(req.tools or []):
        if tool.type.startswith("web_search"):  # web_search, web_search_preview, dated ones
            searching = True
        if tool.type == "namespace":
            where = f"tools[{index}]"
            if not tool.name:
                raise _bad(f"{where}: a namespace tool needs a name", f"{where}.name")
            for j, member in enumerate(tool.tools or []):
                _offer(member, f"{where}.tools[{j}]", out, tool.name)
        elif tool.type in _OFFERED:
            _offer(tool, f"tools[{index}]", out)
        else:
            out.skipped_tools.append(tool.type)
    if searching and not conv.tools and conv.model.can_search:
        # Alone, web_search is the upstream's own search (answered with web_search_call
        # items); beside function tools (Codex) it is not offered: the upstream's search
        # must be off while tools are emulated (PROTOCOL.md section 6.6).
        conv.search = True
        out.skipped_tools = [t for t in out.skipped_tools if not t.startswith("web_search")]
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        conv.tool_choice = choice or "auto"
    elif choice.type.startswith("web_search") and conv.search:
        conv.tool_choice = "auto"
    elif choice.type not in _OFFERED:
        raise _bad(
            f"tool_choice: '{choice.type}' tools are not supported, only function and custom tools",
            "tool_choice",
        )
    else:
        if out.offered.get(choice.name or "") != Offered(choice.type, choice.name or ""):
            raise _bad(
                f"tool_choice names '{choice.name}', which is not among the {choice.type} tools",
                "tool_choice",
            )
        conv.tool_choice = f"function:{choice.name}"
    if conv.tool_choice not in ("none", "auto") and not conv.tools:
        raise _bad("tool_choice is set but no function tools were given", "tool_choice")
    conv.parallel_tool_calls = req.parallel_tool_calls is not False


_OFFERED = ("function", "custom")


def _offer(tool: ToolDef, where: str, out: Converted, namespace: str | None = None) -> None:
    if tool.type not in _OFFERED:
        raise _bad(
            f"{where}: a namespace holds function and custom tools, not '{tool.type}'",
            f"{where}.type",
        )
    if not tool.name:
        raise _bad(f"{where}: a {tool.type} tool needs a name", f"{where}.name")
    spec, offered = offer(
        tool.type, tool.name, tool.description or "", tool.parameters, tool.format, namespace
    )
    out.conv.tools.append(spec)
    out.offered[spec.name] = offered


def _items(items: list[InputItem], turns: list[Turn], names: dict[str, str], label: str) -> None:
    for index, item in enumerate(items):
        where = f"{label}[{index}]"
        kind = item.type
        if kind == "message":
            role = _ROLES.get(item.role or "")
            if role is None:
                raise _bad(f"{where}: unknown message role {item.role!r}", f"{where}.role")
            text, images = _content(item.content, f"{where}.content")
            if images and role != "user":
                raise _bad(f"{where}: images are taken in user messages only", images[0].param)
            if role == "user" and not text and not images:
                raise _bad(f"{where}: a user message needs text", f"{where}.content")
            if text or images:
                turns.append(Turn(role, text, images))
        elif kind in ("function_call", "custom_tool_call"):
            if not item.name or item.call_id is None:
                raise _bad(f"{where}: a {kind} needs name and call_id", where)
            sent = item.arguments if kind == "function_call" else item.input
            call = call_from_item(
                kind, item.call_id or new_call_id(), item.name, sent or "", item.namespace
            )
            names[call.id] = call.name
            last = turns[-1] if turns else None
            if last is not None and last.role == "assistant":
                last.tool_calls.append(call)
            else:
                turns.append(Turn("assistant", "", tool_calls=[call]))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            if not item.call_id:
                raise _bad(f"{where}: a {kind} needs call_id", f"{where}.call_id")
            text = _text(item.output, f"{where}.output")
            name = names.get(item.call_id) or model_name(item.name or "", item.namespace)
            turns.append(Turn("tool", text, tool_call_id=item.call_id, name=name))
        elif kind not in ("reasoning", "web_search_call"):  # the answer after it has the links
            raise _bad(
                f"{where}: input items of type '{kind}' are not supported (message,"
                " function_call, custom_tool_call, their outputs and reasoning are)",
                f"{where}.type",
            )


def _text(content: str | list[Part] | None, where: str) -> str:
    text, images = _content(content, where)
    if images:
        raise _bad(f"{images[0].param}: images are taken in user messages only", images[0].param)
    return text


def _content(content: str | list[Part] | None, where: str) -> tuple[str, list[Image]]:
    """The text of some content (parts joined by newlines) and its ``input_image`` parts."""
    if not isinstance(content, list):
        return content or "", []
    parts, images = [], []
    for j, part in enumerate(content):
        if part.type in _TEXT_PARTS:
            parts.append(part.text or "")
        elif part.type == "refusal":
            parts.append(part.refusal or "")
        elif part.type == "input_image" and part.image_url:
            images.append(Image(f"{where}[{j}]", part.image_url))
        elif part.type == "input_image":
            raise _bad(
                f"{where}[{j}]: an input_image needs image_url (a data: URL or an http(s) URL);"
                " file_id refers to OpenAI's file store, which this gateway does not have",
                f"{where}[{j}].image_url",
            )
        else:
            raise _bad(f"{where}[{j}]: '{part.type}' input is not supported", f"{where}[{j}]")
    # Separate parts stay separate words ("hi" + "there" is not "hithere").
    return "\n".join(p for p in parts if p), images
