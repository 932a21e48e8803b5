"""Caller-defined tools, emulated through the prompt (the upstream has none of its own).

Owns ``render_for_upstream``: a ``Conversation`` with tools and tool history becomes plain
system/user/assistant turns the upstream accepts. The tools and the calling protocol go into
the system turn; earlier calls are written back in the same protocol (so the model sees it
used), and tool results become user turns holding ``<tool_result>`` blocks. The protocol is
one ``<tool_call>`` block per call holding ``{"name": ..., "arguments": {...}}``; the model's
reply is read back by ``server.emulation.tool_parse``.
"""

import dataclasses

import msgspec

from server.core.chat import Conversation, ToolCall, Turn

__all__ = ["CALL_CLOSE", "CALL_OPEN", "render_call", "render_for_upstream"]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

_PROTOCOL = """# Tools

You can call the functions described below (JSON Schema) to help with the user's request.

<tools>
{tools}
</tools>

To call a function, reply with one block per call, exactly in this form:

<tool_call>
{{"name": "<function name>", "arguments": {{<the arguments as a JSON object>}}}}
</tool_call>

Rules:
- Call only the functions listed above, with arguments that match their schema, written as
  strict JSON (double quotes, no comments, no trailing commas).
- You may write a short sentence before the calls. Write nothing after the last call: stop
  and wait, the results come back in the next message as
  <tool_result name="..." id="...">...</tool_result> blocks.
- Never describe a call in prose instead of making it, and never invent a result.
{extra}"""

_CHOICE = {
    "auto": "- Call functions only when they help; otherwise answer directly.",
    "required": "- You must call at least one function in this reply.",
}
_PARALLEL = {
    True: "- When several calls do not depend on each other, make them all in this reply.",
    False: "- Make at most one call per reply.",
}

_encode = msgspec.json.encode


def render_call(call: ToolCall) -> str:
    try:
        arguments = msgspec.json.decode(call.arguments) if call.arguments else {}
    except msgspec.DecodeError:
        arguments = call.arguments
    body = _encode({"name": call.name, "arguments": arguments}).decode()
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def _protocol(conv: Conversation) -> str:
    specs = [
        _encode({"name": t.name, "description": t.description, "parameters": t.parameters}).decode()
        for t in conv.tools
    ]
    choice = conv.tool_choice
    if choice.startswith("function:"):
        rule = f"- You must call the function `{choice[9:]}` in this reply."
    else:
        rule = _CHOICE.get(choice, _CHOICE["auto"])
    extra = f"{rule}\n{_PARALLEL[conv.parallel_tool_calls]}\n"
    return _PROTOCOL.format(tools="\n".join(specs), extra=extra)


def _text_of(turn: Turn, names: dict[str, str]) -> tuple[str, str]:
    """(upstream role, text) of one turn; ``names``: call id -> function name so far."""
    if turn.role == "tool":
        name = turn.name or names.get(turn.tool_call_id, "")
        head = f'<tool_result name="{name}" id="{turn.tool_call_id}">'
        return "user", f"{head}\n{turn.text}\n</tool_result>"
    if turn.role == "assistant" and turn.tool_calls:
        calls = "\n".join(render_call(call) for call in turn.tool_calls)
        return "assistant", f"{turn.text}\n\n{calls}".strip()
    return turn.role, turn.text


def render_for_upstream(conv: Conversation) -> Conversation:
    """The conversation as the upstream can take it: tools in the system turn (when the
    choice allows calls), tool history as text, and no two consecutive turns of one role."""
    uses_tools = bool(conv.tools) and conv.tool_choice != "none"
    has_history = any(t.role == "tool" or t.tool_calls for t in conv.turns)
    if not uses_tools and not has_history:
        return conv
    turns: list[Turn] = []
    names: dict[str, str] = {}
    if uses_tools:
        system = [t.text for t in conv.turns if t.role == "system"]
        turns.append(Turn("system", "\n\n".join([*system, _protocol(conv)])))
    for turn in conv.turns:
        if uses_tools and turn.role == "system":
            continue
        names.update((call.id, call.name) for call in turn.tool_calls)
        role, text = _text_of(turn, names)
        if turns and turns[-1].role == role and role != "system":
            last = turns[-1]
            turns[-1] = Turn(role, f"{last.text}\n\n{text}", [*last.images, *turn.images])
        else:
            turns.append(Turn(role, text, list(turn.images)))  # a tool result's images too
    return dataclasses.replace(conv, turns=turns)
