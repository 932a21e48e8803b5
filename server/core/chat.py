"""The neutral language between the API faces and the core.

Owns ``Conversation`` (what a client asked, whichever API it spoke: turns, tools, tool
choice, structured output as an ``OutputFormat``), ``ToolSpec``/``ToolCall``, ``Usage``, and
the ``Sink`` protocol: where the core sends what the model says (reasoning text, answer text,
tool calls, the ``Ending`` with its reason and usage, or a failure). The OpenAI and Anthropic faces
each turn their request into a ``Conversation`` and implement a ``Sink``; neither knows the
upstream.
"""

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.core.effort import upstream_effort
from server.core.errors import GatewayError
from server.core.models import Model

__all__ = [
    "CollectingSink",
    "Conversation",
    "Ending",
    "Image",
    "OutputFormat",
    "Sink",
    "ToolCall",
    "ToolSpec",
    "Turn",
    "Usage",
    "WebSearch",
    "Writer",
]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # JSON Schema of the arguments


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, encoded


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """Structured output asked for: a JSON value valid against ``schema`` (None: any JSON
    object, OpenAI's ``json_object``). With ``tool`` the value is the input of a call of
    that tool (Anthropic's ``tool_choice`` naming one tool), answered as a tool call;
    ``description`` is the tool's, for the prompt."""

    name: str = ""
    schema: dict[str, Any] | None = None
    tool: str = ""
    description: str = ""


@dataclass(slots=True)
class Image:
    """One picture a client sent: ``source`` is a ``data:`` URL or an http(s) URL until
    ``server.core.images.gather`` reads it into ``data`` (``media_type`` from its bytes).
    ``param`` is the request field it came in, for the errors that name it."""

    param: str
    source: str = field(default="", repr=False)
    data: bytes = field(default=b"", repr=False)
    media_type: str = ""
    digest: str = ""  # SHA-256 of ``data``, hex: what the upload cache is keyed by


@dataclass(slots=True)
class Turn:
    role: str  # "system" | "user" | "assistant" | "tool"
    text: str
    images: list[Image] = field(default_factory=list)  # vision input (user and tool turns)
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant turns
    tool_call_id: str = ""  # tool turns: which call this answers
    name: str = ""  # tool turns: the function's name


@dataclass(slots=True)
class Conversation:
    model: Model
    turns: list[Turn]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    thinking: bool | None = None  # None: the model row decides
    effort: str | None = None  # the client's effort level (server/core/effort.py LEVELS)
    request_id: str = ""
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str = "auto"  # "auto" | "none" | "required" | "function:<name>"
    stop: list[str] = field(default_factory=list)  # stop sequences
    parallel_tool_calls: bool = True
    output_format: OutputFormat | None = None  # structured output (emulation/structured.py)
    search: bool = False  # the client asked for the upstream's web search (a server tool)
    extra: dict[str, Any] = field(default_factory=dict)
    captcha: str = field(default="", repr=False)  # the caller's single-use param; never shown
    # ZAI_CHATS=continue: the client's conversation, hashed (server/core/continuation.py)
    thread: str = field(default="", repr=False)

    @property
    def prompt(self) -> str:
        """The latest user text: what the upstream signs."""
        for turn in reversed(self.turns):
            if turn.role == "user":
                return turn.text
        return self.turns[-1].text if self.turns else ""

    @property
    def images(self) -> list[Image]:
        return [image for turn in self.turns for image in turn.images]

    @property
    def upstream_effort(self) -> str | None:
        """``features.reasoning_effort`` for the upstream, only where the model takes it."""
        if self.thinking is False:
            return None
        return upstream_effort(self.effort, self.model.effort)

    @property
    def wants_thinking(self) -> bool:
        if self.upstream_effort is not None:
            return True  # the upstream reads an effort only with thinking on
        return self.model.thinking if self.thinking is None else self.thinking


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class WebSearch:
    """One search the upstream ran on its own while answering: what it looked for and the
    sources it found, (title, url) in the order it listed them."""

    query: str
    results: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Ending:
    """How one completion ended: ``reason`` is stop, length, tool_calls, content_filter or
    stop_sequence (then ``stop_sequence`` says which); ``reasoning``/``content`` are the whole
    final texts (authoritative); ``searches`` what the upstream's web search did. A sink in
    front of another passes on a changed copy (``dataclasses.replace``)."""

    reason: str = "stop"
    usage: Usage | None = None
    reasoning: str = ""
    content: str = ""
    stop_sequence: str | None = None
    searches: tuple[WebSearch, ...] = ()


class Sink(Protocol):
    """Receives one completion as it happens. ``started`` turns true with the first byte
    that reaches the client; until then a failure can still be retried or sent as an HTTP
    error status."""

    @property
    def started(self) -> bool: ...

    async def delta(self, reasoning: str, content: str) -> None: ...

    async def tool_call(self, call: ToolCall) -> None: ...

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        """The upstream's web search ran (only when the client asked for it with a search
        tool): called once, before the first answer text, so a face can put its search
        blocks first; ``Ending.searches`` holds them all (any that came later too)."""

    async def finish(self, end: Ending) -> None:
        """The end: how, with what usage, and the whole final texts."""

    async def fail(self, error: GatewayError) -> None: ...


class Writer(Protocol):
    """What a face's sink needs from the HTTP response (a tornado RequestHandler is one)."""

    def set_header(self, name: str, value: str) -> None: ...

    def write(self, chunk: bytes) -> None: ...

    def flush(self) -> Awaitable[None]: ...

    def send_gateway_error(self, err: GatewayError) -> None:
        """An error answer (status, headers, body) before anything else was written."""


class CollectingSink:
    """The shared half of a face's non-streamed sink: text arrives whole at ``finish``,
    tool calls are collected on the way, a failure is an HTTP error answer."""

    started = False

    def __init__(self, out: Writer) -> None:
        self.out = out
        self.calls: list[ToolCall] = []

    async def delta(self, reasoning: str, content: str) -> None:
        return None

    async def tool_call(self, call: ToolCall) -> None:
        self.calls.append(call)

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        return None  # a whole answer puts Ending.searches in place at the end

    async def fail(self, error: GatewayError) -> None:
        self.out.send_gateway_error(error)
