"""Reading the model's tool calls back out of its streamed answer.

Owns ``ToolCallScanner`` and ``parse_call``. The scanner takes answer text as it streams and
gives back pieces: text to show, and ``ToolCall``s. Text that might be the start of a
``<tool_call>`` block is held back only until it can be decided, and a block that does not
close within ``SCAN_LIMIT`` characters is given back as text. A block's body is read as JSON
(``{"name", "arguments"}``, also ``{"function": {...}}`` and ``"parameters"``) or as GLM's
native ``name`` + ``<arg_key>/<arg_value>`` form; almost-JSON is repaired when that is safe
(code fences, trailing commas, Python literals, single quotes). A call naming no known
function, or beyond repair, is returned as the text it was: never invented.
"""

import re
from typing import Any

import msgspec

from server.core.chat import ToolCall
from server.emulation.holdback import partial_suffix
from server.emulation.tool_prompt import CALL_CLOSE, CALL_OPEN
from server.ids import hex_id

__all__ = ["ToolCallScanner", "loads_repaired", "parse_call"]

_FENCE = re.compile(r"^\s*```[\w-]*\s*\n?(.*?)\n?\s*```\s*$", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_PY_LITERALS = re.compile(r"\b(True|False|None)\b")
_PY_JSON = {"True": "true", "False": "false", "None": "null"}
_NATIVE_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def new_call_id() -> str:
    return f"call_{hex_id(24)}"


def loads_repaired(text: str) -> object:
    """``text`` as JSON, repaired when that is safe; None when it cannot be read."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        pass
    repaired = _TRAILING_COMMA.sub(r"\1", text)
    repaired = _PY_LITERALS.sub(lambda m: _PY_JSON[m[1]], repaired)
    if '"' not in repaired:
        repaired = repaired.replace("'", '"')
    try:
        return msgspec.json.decode(repaired)
    except msgspec.DecodeError:
        return None


def _native(body: str) -> tuple[str, dict[str, Any]] | None:
    """GLM's own format: the name on the first line, then key/value tag pairs."""
    name, _, rest = body.strip().partition("\n")
    if not name or "<" in name or "{" in name:
        return None
    arguments: dict[str, Any] = {}
    for key, value in _NATIVE_ARG.findall(rest):
        parsed = loads_repaired(value.strip())
        arguments[key.strip()] = value.strip() if parsed is None else parsed
    return name.strip(), arguments


def parse_call(body: str, known: set[str]) -> ToolCall | None:
    """One block's body as a call to a known function, or ``None``."""
    fenced = _FENCE.match(body)
    text = (fenced[1] if fenced else body).strip()
    value = loads_repaired(text) if text.startswith("{") else None
    if isinstance(value, dict):
        function = value.get("function")
        inner = function if isinstance(function, dict) else value
        name = inner.get("name")
        arguments = inner.get("arguments", inner.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = loads_repaired(arguments) if arguments.strip() else {}
    elif value is None and not text.startswith("{"):
        found = _native(text)
        name, arguments = found if found else (None, None)
    else:
        return None
    if not isinstance(name, str) or name not in known or not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), name, msgspec.json.encode(arguments).decode())


class ToolCallScanner:
    """Splits streamed answer text into text and tool calls.

    >>> scanner = ToolCallScanner({"get_weather"}, scan_limit=200_000)
    >>> scanner.feed('Let me check. <tool_call>{"name": "get_weather", "argum')
    ['Let me check. ']
    >>> scanner.feed('ents": {"city": "Paris"}}</tool_call>')
    [ToolCall(id='call_...', name='get_weather', arguments='{"city":"Paris"}')]
    """

    def __init__(self, known: set[str], scan_limit: int, parallel: bool = True) -> None:
        self.known = known
        self.scan_limit = scan_limit
        self.parallel = parallel
        self.calls = 0
        self._pending = ""

    def __repr__(self) -> str:
        return f"<ToolCallScanner calls={self.calls} held={len(self._pending)}>"

    def feed(self, text: str) -> list[str | ToolCall]:
        self._pending += text
        out: list[str | ToolCall] = []
        while self._pending:
            pending = self._pending
            start = pending.find(CALL_OPEN)
            if start < 0:
                keep = partial_suffix(pending, CALL_OPEN)
                _emit(out, pending[: len(pending) - keep])
                self._pending = pending[len(pending) - keep :]
                break
            _emit(out, pending[:start])
            end = pending.find(CALL_CLOSE, start + len(CALL_OPEN))
            if end < 0:
                if len(pending) - start > self.scan_limit:
                    _emit(out, pending[start:])  # never closed: it was text after all
                    self._pending = ""
                else:
                    self._pending = pending[start:]
                break
            self._pending = pending[end + len(CALL_CLOSE) :]
            raw = pending[start : end + len(CALL_CLOSE)]
            self._take(pending[start + len(CALL_OPEN) : end], raw, out)
        return out

    def close(self) -> list[str | ToolCall]:
        """The stream ended: a block left open is read if it parses, else given back."""
        pending, self._pending = self._pending, ""
        out: list[str | ToolCall] = []
        if pending.startswith(CALL_OPEN):
            self._take(pending[len(CALL_OPEN) :], pending, out)
        else:
            _emit(out, pending)
        return out

    def _take(self, body: str, raw: str, out: list[str | ToolCall]) -> None:
        call = parse_call(body, self.known)
        if call is None:
            _emit(out, raw)
        elif self.parallel or not self.calls:
            self.calls += 1
            out.append(call)


def _emit(out: list[str | ToolCall], text: str) -> None:
    if text:
        out.append(text)
