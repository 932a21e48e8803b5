"""One upstream answer stream, read as it arrives: bytes in, what the client should see out.

Owns ``AnswerStream``. It chains the SSE reader, the frame decoder and the edited message
text, and keeps what the frames say besides text: usage (which may arrive before the last
answer delta, and several times in an agentic turn), the end (``phase: done`` only), a
content-security stop, in-band errors (classified by ``failures``) and the site's own tool
calls (``searches``: what its web search did, ``server/zai/search.py``). ``slices()`` returns
the (reasoning, answer) text that grew, coalescing the frames of one socket read into slices
of about ``SLICE`` frames (a large frame counts one more per 256 bytes), so the reader can let
other clients in between two slices of a long answer arriving faster than it is read.
"""

from collections.abc import Iterator

import msgspec
from loguru import logger

from server.core.chat import Usage, WebSearch
from server.core.errors import GatewayError
from server.zai.failures import inband_failure, is_content_filter
from server.zai.frames import FrameData, UpstreamUsage, decode_frame
from server.zai.search import searches
from server.zai.sse import SSEReader
from server.zai.streamed import StreamingText

__all__ = ["SLICE", "AnswerStream"]

# Frames read before the reader gives the event loop a turn (a fraction of a millisecond):
# with 256, ten other clients waited 2.7 times longer while a 2 MB answer was read; with 64,
# as long as without it.
SLICE = 64


class AnswerStream:
    """The state of one upstream answer. Used as::

    stream = AnswerStream(model="GLM-4.5")
    for reasoning, answer in stream.slices(chunk):   # per socket read
        ...                                          # then await asyncio.sleep(0) if tired()
    stream.end()                              # raises GatewayError if it ended badly
    stream.finish_reason, stream.usage
    """

    __slots__ = (
        "_last_usage",
        "_sse",
        "_work",
        "done",
        "failure",
        "finish_reason",
        "frames",
        "malformed",
        "model",
        "site_calls",
        "text",
        "usage",
    )

    def __init__(self, model: str = "", holdback: int = 0) -> None:
        self.model = model
        self._sse = SSEReader()
        self._work = 0  # frames (+1 per 256 bytes) read since the loop last had a turn
        self.text = StreamingText(holdback)
        self.usage: Usage | None = None
        self._last_usage: UpstreamUsage | None = None
        self.done = False
        self.failure: GatewayError | None = None
        self.finish_reason = "stop"
        self.frames = 0
        self.malformed = 0
        # (name, argument pieces, first site-output entry after it) of the site's own calls
        self.site_calls: list[tuple[str, list[str], int]] = []

    def __repr__(self) -> str:
        state = "done" if self.done else ("failed" if self.failure else "open")
        return f"<AnswerStream {state} frames={self.frames} {self.text!r}>"

    def feed(self, chunk: bytes) -> tuple[str, str]:
        """Read one socket read whole: what grew in (reasoning, answer)."""
        reasoning, answer = [], []
        for r, a in self.slices(chunk):
            reasoning.append(r)
            answer.append(a)
            self.tired()
        return "".join(reasoning), "".join(answer)

    def slices(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        """What grew in (reasoning, answer), a slice of this read's frames at a time."""
        changed = False
        for payload in self._sse.feed(chunk):
            if self.done:
                break
            changed |= self._apply(payload)
            self._work += 1 + (len(payload) >> 8)
            if self._work >= SLICE:
                yield self.text.advance() if changed else ("", "")
                changed = False
        if changed:
            yield self.text.advance()

    def tired(self) -> bool:
        """Whether a slice's worth of frames was read since the last True (the reader then
        gives the event loop a turn)."""
        if self._work < SLICE:
            return False
        self._work = 0
        return True

    def end(self) -> tuple[str, str]:
        """The upstream closed: flush, and raise if the answer did not finish."""
        changed = False
        for payload in self._sse.close():
            if not self.done:
                changed |= self._apply(payload)
        if self.failure is not None:
            raise self.failure
        if not self.done:
            raise GatewayError(
                "unavailable",
                "the upstream closed the stream before it said done",
                model=self.model,
            )
        tail = self.text.advance(final=True)
        if self.text.rewrites:
            logger.info(
                "{} upstream edit(s) changed text already derived; a streaming client keeps"
                " what it was sent (STREAM_HOLDBACK), the final answer is exact",
                self.text.rewrites,
            )
        return tail

    def final(self) -> tuple[str, str]:
        """The whole (reasoning, answer) as the last frame left them."""
        return self.text.text.derive(final=True)

    def search_mark(self) -> tuple[int, int, int]:
        """Changes whenever what ``searches`` would read does (cheap)."""
        return (len(self.site_calls), *self.text.text.site_mark())

    def searches(self) -> tuple[WebSearch, ...]:
        """What the upstream's own web search looked for and found in this answer."""
        calls = [(name, "".join(args), at) for name, args, at in self.site_calls]
        return searches(calls, self.text.text.site_entries())

    def _apply(self, payload: bytes) -> bool:
        try:
            frame = decode_frame(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.malformed += 1
            logger.warning("skipped an upstream frame that is not JSON we know: {}", exc)
            return False
        if frame is None:
            return False
        self.frames += 1
        if frame.phase == "tool_call" and (frame.delta_name or frame.delta_arguments):
            if frame.delta_name or not self.site_calls:  # a name opens the next call
                self.site_calls.append((frame.delta_name or "", [], self.text.text.site_break()))
            self.site_calls[-1][1].append(frame.delta_arguments or "")
        changed = self._text(frame)
        if frame.usage is not None:
            self._count(frame.usage)
        failure = frame.failure
        if failure is not None:
            if is_content_filter(failure):
                self.finish_reason = "content_filter"
            else:
                self.failure = inband_failure(failure, self.model)
            self.done = True
        elif frame.is_done:
            self.done = True
        return changed

    def _text(self, frame: FrameData) -> bool:
        # As the page reads a frame: an edit (no index means 0), else a delta, else a
        # snapshot of the whole text.
        if frame.edit_content is not None:
            self.text.text.edit(frame.edit_index or 0, frame.edit_content, frame.phase)
            return True
        if frame.delta_content:
            self.text.text.append(frame.delta_content, frame.phase)
            return True
        if frame.content is not None and frame.delta_content is None:
            self.text.text.snapshot(frame.content, frame.phase)
            return True
        return False

    def _count(self, usage: UpstreamUsage) -> None:
        # The same usage repeated (2025 streams send it three times) is counted once;
        # distinct ones (several model calls in one agentic turn) add up.
        if usage == self._last_usage:
            return
        self._last_usage = usage
        total = self.usage or Usage()
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.total_tokens += usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        total.cached_tokens += usage.cached
        self.usage = total
