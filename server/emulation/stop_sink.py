"""Stop sequences, applied by the gateway (the upstream has none).

Owns ``StopSequenceSink`` and ``StopSequenceReached``. Answer text passes through until one
of the client's stop sequences appears: the text before it is sent, the sequence and what
follows are not, and the completion ends with reason ``stop_sequence`` (the faces say
``stop`` for OpenAI, ``stop_sequence`` with the sequence for Anthropic). A tail that could be
the start of a sequence is held back until it is decided. The sink sits inside the tool sink,
so it sees only text and whole calls (a sequence inside a call's arguments is not a stop); a
call ends any text held back, and a call made before the stop keeps the reason ``tool_calls``
(the client has calls to run).
"""

from dataclasses import replace

from server.core.chat import Ending, Sink, ToolCall, WebSearch
from server.core.errors import GatewayError
from server.emulation.holdback import partial_suffix

__all__ = ["StopSequenceReached", "StopSequenceSink"]


class StopSequenceReached(Exception):
    """The answer reached a stop sequence: stop reading the upstream."""


class StopSequenceSink:
    def __init__(self, inner: Sink, sequences: list[str]) -> None:
        self.inner = inner
        self.sequences = [s for s in sequences if s]
        self.hit: str | None = None
        self._held = ""

    def __repr__(self) -> str:
        return f"<StopSequenceSink {len(self.sequences)} hit={self.hit!r} -> {self.inner!r}>"

    @property
    def started(self) -> bool:
        return self.inner.started

    async def delta(self, reasoning: str, content: str) -> None:
        if self.hit is not None:
            return
        text = self._held + content
        cut = self._first(text)
        if cut is not None:
            await self._send(reasoning, text[:cut])
            raise StopSequenceReached(self.hit)
        keep = max((partial_suffix(text, seq) for seq in self.sequences), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        await self._send(reasoning, text[: len(text) - keep])

    async def tool_call(self, call: ToolCall) -> None:
        if self.hit is not None:
            return
        held, self._held = self._held, ""
        await self._send("", held)  # a sequence cannot span a call
        await self.inner.tool_call(call)

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        await self.inner.searched(searches)

    async def finish(self, end: Ending) -> None:
        cut = self._first(end.content)
        if cut is not None:
            end = replace(end, content=end.content[:cut])
        elif self._held:
            await self._send("", self._held)
        if self.hit is not None and end.reason != "tool_calls":
            end = replace(end, reason="stop_sequence", stop_sequence=self.hit)
        await self.inner.finish(end)

    async def fail(self, error: GatewayError) -> None:
        await self.inner.fail(error)

    def _first(self, text: str) -> int | None:
        found = [(text.find(seq), seq) for seq in self.sequences if seq in text]
        if not found:
            return None
        cut, self.hit = min(found)
        return cut

    async def _send(self, reasoning: str, text: str) -> None:
        if reasoning or text:
            await self.inner.delta(reasoning, text)
