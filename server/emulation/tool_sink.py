"""A sink in front of the face's sink that turns the answer's tool-call blocks into calls.

Owns ``ToolCallSink``. Reasoning passes straight through; answer text goes through a
``ToolCallScanner``, so the face's sink receives plain text and ``tool_call``s, and the end
says ``tool_calls`` when any call was made. The final (non-streamed) content is the text the
scanner let through, so no block's markup ever reaches a client. Stop sequences are applied
by the sink inside this one, to the text the scanner lets through: once one is reached, the
blocks after it are not read.
"""

from dataclasses import replace

from server.core.chat import Ending, Sink, ToolCall, WebSearch
from server.core.errors import GatewayError
from server.emulation.stop_sink import StopSequenceReached
from server.emulation.tool_parse import ToolCallScanner

__all__ = ["ToolCallSink"]


class ToolCallSink:
    def __init__(self, inner: Sink, scanner: ToolCallScanner) -> None:
        self.inner = inner
        self.scanner = scanner
        self.text: list[str] = []
        self.calls: list[ToolCall] = []
        self._blank = ""  # whitespace held back
        self._stopped = False  # a stop sequence ended the answer: what follows is not read

    def __repr__(self) -> str:
        return f"<ToolCallSink {self.scanner!r} -> {self.inner!r}>"

    @property
    def started(self) -> bool:
        return self.inner.started

    async def delta(self, reasoning: str, content: str) -> None:
        pieces = self.scanner.feed(content) if content else []
        try:
            await self._send(reasoning, pieces)
        except StopSequenceReached:
            self._stopped = True
            raise

    async def tool_call(self, call: ToolCall) -> None:
        self.calls.append(call)
        await self.inner.tool_call(call)

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        await self.inner.searched(searches)

    async def finish(self, end: Ending) -> None:
        if not self._stopped:
            await self._send("", self.scanner.close())
        reason = "tool_calls" if self.calls else end.reason
        await self.inner.finish(replace(end, reason=reason, content="".join(self.text)))

    async def fail(self, error: GatewayError) -> None:
        await self.inner.fail(error)

    async def _send(self, reasoning: str, pieces: list[str | ToolCall]) -> None:
        text = ""
        for piece in pieces:
            if isinstance(piece, str):
                text += piece
                continue
            if reasoning or text:
                await self._text(reasoning, text)
                reasoning = text = ""
            self._blank = ""
            await self.tool_call(piece)
        if reasoning or text:
            await self._text(reasoning, text)

    async def _text(self, reasoning: str, text: str) -> None:
        # Trailing whitespace waits for more text: before a call or at the end it is the
        # protocol's layout, not the answer's (so streamed text equals the final text).
        text = self._blank + text
        body = text.rstrip()
        self._blank = text[len(body) :]
        if not self.text:
            body = body.lstrip()
        if body:
            self.text.append(body)
        if reasoning or body:
            await self.inner.delta(reasoning, body)
