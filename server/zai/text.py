"""The upstream's one message text, edited in place, and what it says so far, in linear time.

Owns ``AnswerText``. The upstream keeps ONE text per answer holding the thinking block, the
answer and its own tool blocks. A frame appends (``delta_content``), edits
(``edit_index``/``edit_content``: keep the first ``edit_index`` UTF-16 code units, as the
page's JavaScript ``substring`` counts, then append; no index means 0) or replaces it whole
(``content``, a snapshot). Every character remembers the kind of the frame that wrote it
(thinking, answer, or site-tool output), because the 2026 plain-thinking shape has no markup
and the phase is its only boundary.

The text is read as the client should see it by a parser that consumes each new piece once:
``<details type="reasoning">`` blocks (2025 shape: opener, ``<summary>``, ``> `` line prefixes)
and plain thinking-phase text become reasoning; ``<glm_block>`` blocks and ``tool_response``
text are the site's own tools and never reach the client; the rest is the answer. Each goes
to its ``channel.Channel``, which joins pieces separated by a block or a phase switch by
exactly one blank line, strips them and links citation markers. Only a bounded tail is undecided at
any time (a tag or marker still arriving, trailing whitespace), so CPU per answer is linear in
its size: re-reading the whole text after every frame made a 2.6 M-character answer cost 40 s.
An edit rewinds the parser to the last checkpoint before it (one every ``_BLOCK`` characters)
and re-reads only from there.
"""

import bisect
import re

from server.zai.channel import Channel, ChannelState, valid
from server.zai.citations import references

__all__ = [
    "ANSWER",
    "KIND_ANSWER",
    "KIND_THINK",
    "KIND_TOOL",
    "REASONING",
    "AnswerText",
    "utf16_len",
]

KIND_THINK, KIND_ANSWER, KIND_TOOL = 0, 1, 2
REASONING, ANSWER = 0, 1

_PHASE_KIND = {"thinking": KIND_THINK, "tool_response": KIND_TOOL}
_CHANNEL_OF = {KIND_THINK: REASONING, KIND_ANSWER: ANSWER}
_KIND_PHASE = {KIND_THINK: "thinking", KIND_ANSWER: "answer", KIND_TOOL: "tool_response"}

_BLOCK = 4096  # characters of upstream text between two rewind checkpoints
_OPENERS = ("<details", "<glm_block")
_DETAILS_CLOSE, _GLM_CLOSE = "</details>", "</glm_block>"
_SUMMARY_OPEN, _SUMMARY_CLOSE = "<summary>", "</summary>"
_WORD = re.compile(r"\w")
_QUOTE_AFTER_NL = re.compile(r"\n> ?")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Parser modes: plain text, a <details> opener before its '>', between the opener and the
# body (newlines, then maybe <summary>), inside <summary>, the thinking body, a <glm_block>.
_PLAIN, _HEAD, _PRE, _SUMMARY, _BODY, _GLM = range(6)

# The parser at a checkpoint (``AnswerText._state``): mode, undecided text with its kinds,
# at a body line's start, the <glm_block> so far, site-tool entries kept, the last one still
# growing and its text, then the reasoning and answer channels' own.
_State = tuple[
    int,
    tuple[tuple[str, int], ...],
    bool,
    tuple[str, ...],
    int,
    bool,
    str,
    ChannelState,
    ChannelState,
]


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as JavaScript (and ``edit_index``) counts."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) >> 1


class _Block:
    """A stretch of the upstream text between two checkpoints, with the parser's state at its
    start: a rewind into it restores that state and re-reads only this stretch."""

    __slots__ = ("kinds", "parts", "size", "starts", "state", "u16")

    def __init__(self, state: _State) -> None:
        self.parts: list[str] = []
        self.size = 0  # characters (code points)
        self.u16 = 0  # UTF-16 code units
        self.starts: list[int] = []  # kind run i covers [starts[i], starts[i+1]) of the block
        self.kinds: list[int] = []
        self.state = state

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def runs(self, stop: int) -> list[tuple[str, int]]:
        """The block's text up to ``stop`` as (text, kind) runs."""
        text, out = self.text(), []
        for i, start in enumerate(self.starts):
            if start >= stop:
                break
            end = min(self.starts[i + 1] if i + 1 < len(self.starts) else stop, stop)
            out.append((text[start:end], self.kinds[i]))
        return out


class AnswerText:
    """The message text with a kind per character, read as the client sees it.

    >>> text = AnswerText()
    >>> text.append("Let me think.", "thinking"); text.append("Hi!", "answer")
    >>> text.derive()
    ('Let me think.', 'Hi!')
    """

    __slots__ = (
        "_blocks",
        "_body_nl",
        "_carry",
        "_glm",
        "_mode",
        "_refs",
        "_refs_seen",
        "_tool_open",
        "_tools",
        "channels",
        "copied",
    )

    def __init__(self) -> None:
        self.channels = (Channel(self._references), Channel(self._references))
        self._mode = _PLAIN
        self._carry: list[tuple[str, int]] = []  # undecided text (a tag arriving), with kinds
        self._body_nl = True  # in a <details> body, at the start of a line
        self._glm: list[str] = []  # the <glm_block> body read so far
        self._tools: list[str] = []  # site-tool output, where 2026 citation ids are resolved
        self._tool_open = False  # the last tool entry is a run still growing
        self._refs: dict[str, tuple[str, str]] = {}
        self._refs_seen = -1  # -1: the tools changed since refs were read
        self.copied = 0  # characters the parser re-read after edits (rewinds)
        self._blocks = [_Block(self._state())]

    def __repr__(self) -> str:
        sizes = "+".join(str(c.out.size) for c in self.channels)
        return f"<AnswerText chars={self.size} blocks={len(self._blocks)} out={sizes}>"

    @property
    def size(self) -> int:
        return sum(block.size for block in self._blocks)

    @property
    def text(self) -> str:
        """The whole upstream text (for tests and debugging: it is joined on each call)."""
        return "".join(block.text() for block in self._blocks)

    # The upstream's operations

    def append(self, chunk: str, phase: str | None) -> None:
        if not chunk:
            return
        if chunk.isascii():
            units = len(chunk)
        else:
            if _SURROGATE.search(chunk):  # halves escaped in JSON: pair them, one character
                chunk = chunk.encode("utf-16-le", "surrogatepass").decode(
                    "utf-16-le", "surrogatepass"
                )
            units = utf16_len(chunk)
        kind = _PHASE_KIND.get(phase or "", KIND_ANSWER)
        block = self._blocks[-1]
        if block.size >= _BLOCK and self._mode != _GLM:
            block.text()
            block = _Block(self._state())
            self._blocks.append(block)
        kinds = block.kinds
        if not kinds or kinds[-1] != kind:
            block.starts.append(block.size)
            kinds.append(kind)
        block.parts.append(chunk)
        block.size += len(chunk)
        block.u16 += units
        if self._mode == _PLAIN and not self._carry and "<" not in chunk:
            self._emit_kind(chunk, kind)  # the common case, without the parser's dispatch
        else:
            self._feed(chunk, kind)

    def edit(self, index: int, chunk: str, phase: str | None) -> None:
        """Keep the first ``index`` UTF-16 code units, then append ``chunk``."""
        index = max(0, index)
        starts16, total = [], 0
        for block in self._blocks:
            starts16.append(total)
            total += block.u16
        at = max(0, bisect.bisect_right(starts16, index) - 1)
        block = self._blocks[at]
        text = block.text()
        offset = min(index - starts16[at], block.u16)
        half = ""
        if block.u16 != block.size:
            offset, half = _cut(text, offset)
            if half and chunk and "\udc00" <= chunk[0] <= "\udfff":
                chunk, half = _pair(half, chunk[0]) + chunk[1:], ""
        if half:
            half_kind = block.kinds[bisect.bisect_right(block.starts, offset) - 1]
        del self._blocks[at + 1 :]
        self._restore(block.state)
        runs = block.runs(offset)
        block.parts = [text[:offset]] if offset else []
        block.size, block.u16 = offset, utf16_len(text[:offset])
        cut = bisect.bisect_left(block.starts, offset)
        del block.starts[cut:], block.kinds[cut:]
        for piece, kind in runs:
            self.copied += len(piece)
            self._feed(piece, kind)
        if half:
            self.append(half, _KIND_PHASE[half_kind])
        self.append(chunk, phase)

    def snapshot(self, content: str, phase: str | None) -> None:
        """Replace the whole text (a frame with ``content``)."""
        self.edit(0, content, phase)

    def derive(self, final: bool = False) -> tuple[str, str]:
        """Return (reasoning, answer) as the client should see them now (``final``: the
        text is complete, release what waits for more)."""
        reasoning, answer = (c.out.slice(0, c.out.size) + c.tail(final) for c in self.channels)
        return valid(reasoning), valid(answer)

    # Checkpoints

    def _state(self) -> _State:
        return (
            self._mode,
            tuple(self._carry),
            self._body_nl,
            tuple(self._glm),
            len(self._tools),
            self._tool_open,
            self._tools[-1] if self._tools else "",
            self.channels[0].state(),
            self.channels[1].state(),
        )

    def _restore(self, state: _State) -> None:
        mode, carry, self._body_nl, glm, tools, self._tool_open, last, r, a = state
        self._mode, self._carry, self._glm = mode, list(carry), list(glm)
        del self._tools[tools:]
        if self._tools:
            self._tools[-1] = last
        self._refs_seen = -1  # resolved again from what is left
        self.channels[0].restore(r)
        self.channels[1].restore(a)

    def site_mark(self) -> tuple[int, int]:
        """Changes whenever the site's tool output does (cheap: no text is joined)."""
        return len(self._tools), len(self._tools[-1]) if self._tools else 0

    def site_entries(self) -> list[str]:
        """What the site's own tools wrote, one entry per tool response or glm_block, in
        order (for ``search.searches``)."""
        return list(self._tools)

    def site_break(self) -> int:
        """A site-tool call opened: its output starts a new entry, whose index this is."""
        self._tool_open = False
        return len(self._tools)

    def _references(self) -> dict[str, tuple[str, str]]:
        if self._refs_seen < 0:
            self._refs = references("\n".join(self._tools))
            self._refs_seen = 0
        return self._refs

    # The parser: each call consumes the new text once, leaving only an undecided tail

    def _feed(self, chunk: str, kind: int) -> None:
        if self._carry:
            self._carry.append((chunk, kind))
            runs, self._carry = self._carry, []
            data = "".join(text for text, _ in runs)
        else:
            runs, data = None, chunk
        pos, end = 0, len(data)
        while pos < end:
            mode = self._mode
            if mode == _PLAIN:
                pos = self._plain(data, pos, runs, kind)
            elif mode == _BODY:
                pos = self._body(data, pos)
            elif mode == _GLM:
                pos = self._glm_body(data, pos)
            elif mode == _HEAD:
                gt = data.find(">", pos)
                pos = end if gt < 0 else gt + 1
                self._mode = _HEAD if gt < 0 else _PRE
            elif mode == _PRE:
                while pos < end and data[pos] in "\r\n":
                    pos += 1
                rest = data[pos : pos + len(_SUMMARY_OPEN)]
                if rest.startswith(_SUMMARY_OPEN):
                    self._mode, pos = _SUMMARY, pos + len(_SUMMARY_OPEN)
                elif rest and not _SUMMARY_OPEN.startswith(rest):
                    self._mode, self._body_nl = _BODY, True
                elif rest:
                    self._carry = [(data[pos:], kind)]
                    pos = end
            else:  # _SUMMARY
                close = data.find(_SUMMARY_CLOSE, pos)
                if close >= 0:
                    self._mode, self._body_nl = _BODY, True
                    pos = close + len(_SUMMARY_CLOSE)
                else:
                    keep = _partial_end(data, max(pos, end - len(_SUMMARY_CLOSE)), _SUMMARY_CLOSE)
                    if keep < end:
                        self._carry = [(data[keep:], kind)]
                    pos = end

    def _plain(self, data: str, pos: int, runs: list[tuple[str, int]] | None, kind: int) -> int:
        end = len(data)
        start = pos
        while True:
            lt = data.find("<", pos)
            if lt < 0:
                self._emit(data, start, end, runs, kind)
                return end
            rest = data[lt : lt + 11]
            for opener in _OPENERS:
                if rest.startswith(opener):
                    after = lt + len(opener)
                    if after == end:  # the next character says whether it is a tag
                        self._emit(data, start, lt, runs, kind)
                        self._carry = _runs_from(data, lt, runs, kind)
                        return end
                    if not _WORD.match(data, after):
                        self._emit(data, start, lt, runs, kind)
                        for channel in self.channels:
                            channel.boundary()
                        self._tool_open = False
                        self._mode = _HEAD if opener == "<details" else _GLM
                        self._glm = []
                        return after
                elif lt + len(rest) == end and opener.startswith(rest):
                    self._emit(data, start, lt, runs, kind)
                    self._carry = _runs_from(data, lt, runs, kind)
                    return end
            pos = lt + 1

    def _emit(
        self, data: str, start: int, stop: int, runs: list[tuple[str, int]] | None, kind: int
    ) -> None:
        if start >= stop:
            return
        if runs is None:
            self._emit_kind(data[start:stop], kind)
            return
        pos = 0
        for text, run_kind in runs:
            lo, hi = max(start, pos), min(stop, pos + len(text))
            if lo < hi:
                self._emit_kind(data[lo:hi], run_kind)
            pos += len(text)

    def _emit_kind(self, piece: str, kind: int) -> None:
        channel = _CHANNEL_OF.get(kind)
        if channel is None:
            # Site-tool output separates what is around it, like a block.
            if self._tool_open:
                self._tools[-1] += piece
            else:
                self._tools.append(piece)
                self._tool_open = True
            self._refs_seen = -1
            for each in self.channels:
                each.boundary()
            return
        self._tool_open = False
        self.channels[channel].text(piece)
        self.channels[1 - channel].boundary()

    def _body(self, data: str, pos: int) -> int:
        end = len(data)
        stop = data.find(_DETAILS_CLOSE, pos)
        reasoning = self.channels[REASONING]
        if stop >= 0:
            reasoning.text(self._clean(data[pos:stop], final=True))
            reasoning.boundary()
            self._mode = _PLAIN
            return stop + len(_DETAILS_CLOSE)
        keep = _partial_end(data, max(pos, end - len(_DETAILS_CLOSE)), _DETAILS_CLOSE)
        cleaned = self._clean(data[pos:keep], final=False)
        if cleaned:
            reasoning.text(cleaned)
        if keep < end:
            self._carry.append((data[keep:], KIND_THINK))
        return end

    def _clean(self, text: str, final: bool) -> str:
        """Drop the ``> `` that opens each line of a 2025 thinking body; a ``>`` that may be
        followed by its space waits in the carry."""
        if self._body_nl:
            if text.startswith("> "):
                text = text[2:]
            elif text.startswith(">"):
                if len(text) == 1 and not final:
                    self._carry = [(">", KIND_THINK)]
                    return ""
                text = text[1:]
            elif not text:
                return ""
            self._body_nl = False
        if "\n" in text:
            if text.endswith("\n>") and not final:
                self._carry = [(">", KIND_THINK)]
                text = text[:-1]
            if text.endswith("\n"):
                self._body_nl = True
            text = _QUOTE_AFTER_NL.sub("\n", text)
        return text

    def _glm_body(self, data: str, pos: int) -> int:
        end = len(data)
        stop = data.find(_GLM_CLOSE, pos)
        if stop >= 0:
            self._tools.append("".join(self._glm) + data[pos:stop])
            self._refs_seen = -1
            self._glm = []
            self._mode = _PLAIN
            return stop + len(_GLM_CLOSE)
        keep = _partial_end(data, max(pos, end - len(_GLM_CLOSE)), _GLM_CLOSE)
        self._glm.append(data[pos:keep])
        if keep < end:
            self._carry = [(data[keep:], KIND_TOOL)]
        return end


def _cut(text: str, units: int) -> tuple[int, str]:
    """How many characters of ``text`` the first ``units`` UTF-16 code units hold, and the
    first half of the next one when the cut falls inside it. Like JavaScript's ``substring``
    the half is kept (the edit may bring the second half); a lone half reaches clients as
    U+FFFD, one unit as on the page, so later indices still fall where the page has them."""
    count = 0
    for i, char in enumerate(text):
        width = 2 if char > "\uffff" else 1
        if count + width > units:
            if count < units:
                return i, chr(0xD800 + ((ord(char) - 0x10000) >> 10))
            return i, ""
        count += width
    return len(text), ""


def _pair(high: str, low: str) -> str:
    return chr(0x10000 + ((ord(high) - 0xD800) << 10) + (ord(low) - 0xDC00))


def _partial_end(data: str, start: int, tag: str) -> int:
    """Where a trailing fragment of ``tag`` begins in ``data[start:]`` (len(data) if none)."""
    end = len(data)
    lt = data.find("<", start)
    while lt >= 0:
        if tag.startswith(data[lt:end]):
            return lt
        lt = data.find("<", lt + 1)
    return end


def _runs_from(
    data: str, start: int, runs: list[tuple[str, int]] | None, kind: int
) -> list[tuple[str, int]]:
    if runs is None:
        return [(data[start:], kind)]
    out, pos = [], 0
    for text, run_kind in runs:
        lo = max(start, pos) - pos
        if lo < len(text):
            out.append((text[lo:], run_kind))
        pos += len(text)
    return out
