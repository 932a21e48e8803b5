"""The Responses API's tool kinds, as the emulated tool protocol offers and reads them.

Owns ``Offered`` (one tool the model is offered: its kind, its name and namespace as the
client knows them) and the three conversions between the client's items and the neutral
core's ``ToolSpec``/``ToolCall``: ``offer`` (a request's tool -> specs under model-facing
names), ``call_from_item`` (a ``function_call``/``custom_tool_call`` history item -> a
``ToolCall``) and ``call_item`` (a ``ToolCall`` the model made -> the output item). Besides
``function`` tools there are ``custom`` tools (free-form text input, e.g. Codex's
``apply_patch``; offered as a function of one string argument ``input``, whose value comes
back as the call's ``input``) and ``namespace`` tools (a group of function/custom tools, e.g.
an MCP server; each member is offered as ``<namespace>.<name>``, a dot no OpenAI tool name may
hold, and its calls carry ``namespace`` again).
"""

from dataclasses import dataclass
from typing import Any

import msgspec

from server.core.chat import ToolCall, ToolSpec

__all__ = ["CALL_KINDS", "Offered", "call_from_item", "call_item", "model_name", "offer"]

_SEP = "."
_encode = msgspec.json.encode
# output item type -> (item id prefix, the field holding what the model sent)
CALL_KINDS = {"function_call": ("fc", "arguments"), "custom_tool_call": ("ctc", "input")}


@dataclass(frozen=True, slots=True)
class Offered:
    kind: str  # "function" | "custom"
    name: str
    namespace: str | None = None


def model_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{_SEP}{name}" if namespace else name


def _custom_parameters(fmt: dict[str, Any] | None) -> dict[str, Any]:
    """A custom tool as a function of one string: its format (a grammar) says what to write."""
    about = "The tool's whole input, as free-form text."
    if fmt and fmt.get("type") == "grammar" and fmt.get("definition"):
        syntax = fmt.get("syntax") or "lark"
        about += f" It must match this {syntax} grammar:\n{fmt['definition']}"
    return {
        "type": "object",
        "properties": {"input": {"type": "string", "description": about}},
        "required": ["input"],
    }


def offer(
    kind: str,
    name: str,
    description: str,
    parameters: dict[str, Any] | None,
    fmt: dict[str, Any] | None,
    namespace: str | None = None,
) -> tuple[ToolSpec, Offered]:
    """One function or custom tool (inside ``namespace`` if given) as the model sees it."""
    if namespace:
        description = f"({namespace}) {description}".strip()
    args = _custom_parameters(fmt) if kind == "custom" else (parameters or {})
    spec = ToolSpec(model_name(name, namespace), description, args)
    return spec, Offered(kind, name, namespace)


def call_from_item(
    kind: str, call_id: str, name: str, sent: str, namespace: str | None
) -> ToolCall:
    """An earlier call, given back in the input, as the model made it."""
    arguments = _encode({"input": sent}).decode() if kind == "custom_tool_call" else sent
    return ToolCall(call_id, model_name(name, namespace), arguments or "{}")


def _custom_input(arguments: str) -> str:
    try:
        decoded = msgspec.json.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return arguments
    sent = decoded.get("input") if isinstance(decoded, dict) else None
    # not the one-string shape it was offered: hand over what came
    return sent if isinstance(sent, str) else arguments


def call_item(
    item_id: str, call: ToolCall, offered: dict[str, Offered], status: str = "completed"
) -> dict[str, Any]:
    """The output item of a call: ``function_call`` or ``custom_tool_call`` (with its
    ``namespace``), under the name the client gave the tool. ``item_id`` without its prefix."""
    tool = offered.get(call.name) or Offered("function", call.name)
    kind = "custom_tool_call" if tool.kind == "custom" else "function_call"
    prefix, field = CALL_KINDS[kind]
    sent = _custom_input(call.arguments) if tool.kind == "custom" else call.arguments
    item = {
        "type": kind,
        "id": f"{prefix}_{item_id}",
        "call_id": call.id,
        "name": tool.name,
        field: sent if status == "completed" else "",
        "status": status,
    }
    if tool.namespace:
        item["namespace"] = tool.namespace
    return item
