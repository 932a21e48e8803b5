"""The upstream's one message text, edited in place, and what it says so far.

Owns ``AnswerText``. The upstream keeps ONE text per answer holding the thinking block, the
answer and its own tool blocks: ``delta_content`` appends, ``edit_index``/``edit_content``
truncates to a code-point index and appends. Every character remembers the kind of the frame
that wrote it (thinking, answer, or site-tool output), because the 2026 plain-thinking shape
has no markup and the phase is its only boundary.

``derive()`` reads the text as the client should see it: ``<details type="reasoning">``
blocks (2025 shape: opener, ``<summary>``, ``> `` line prefixes) and plain thinking-phase
text become reasoning; ``<glm_block>`` blocks and ``tool_response`` text are the site's own
tools and never reach the client; the rest is the answer. Pieces of one channel separated by
a block or a phase switch are joined by exactly one blank line, and each channel is stripped.
A tag still arriving (``<det`` at the very end) is held back, so what ``derive()`` returns
only ever grows at its end while the upstream merely appends: ``StreamingText`` relies on
that to emit deltas that are never taken back.
"""

import bisect
import re

from server.zai.citations import linkify, references

__all__ = ["KIND_ANSWER", "KIND_THINK", "KIND_TOOL", "AnswerText", "StreamingText"]

KIND_THINK, KIND_ANSWER, KIND_TOOL = 0, 1, 2

_PHASE_KIND = {"thinking": KIND_THINK, "tool_response": KIND_TOOL}

_BLOCK_OPEN = re.compile(r"<(details|glm_block)\b")
_BLOCK_CLOSE = {"details": "</details>", "glm_block": "</glm_block>"}
_HELD_TAGS = ("<details", "<glm_block")
_SUMMARY_OPEN, _SUMMARY_CLOSE = "<summary>", "</summary>"
_QUOTE_PREFIX = re.compile(r"^> ?", re.MULTILINE)


def kind_of(phase: str | None) -> int:
    return _PHASE_KIND.get(phase or "", KIND_ANSWER)


class AnswerText:
    """The message text with a kind per character, stored as runs.

    >>> text = AnswerText()
    >>> text.append("Let me think.", "thinking"); text.append("Hi!", "answer")
    >>> text.derive()
    ('Let me think.', 'Hi!')
    """

    __slots__ = ("_cleaned", "_kinds", "_starts", "text")

    def __init__(self) -> None:
        self.text = ""
        self._starts: list[int] = []  # run i covers [starts[i], starts[i+1])
        self._kinds: list[int] = []
        # Thinking cleaned so far per <details> body: body start -> (line start, cleaned text
        # before it). Blocks grow by whole frames, so only the new lines are cleaned each time.
        self._cleaned: dict[int, tuple[int, str]] = {}

    def __repr__(self) -> str:
        return f"<AnswerText chars={len(self.text)} runs={len(self._starts)}>"

    def append(self, chunk: str, phase: str | None) -> None:
        if not chunk:
            return
        kind = kind_of(phase)
        if not self._kinds or self._kinds[-1] != kind:
            self._starts.append(len(self.text))
            self._kinds.append(kind)
        self.text += chunk

    def edit(self, index: int, chunk: str, phase: str | None) -> None:
        index = max(0, min(index, len(self.text)))
        self.text = self.text[:index]
        self._cleaned = {k: v for k, v in self._cleaned.items() if v[0] <= index}
        cut = bisect.bisect_left(self._starts, index)
        del self._starts[cut:], self._kinds[cut:]
        self.append(chunk, phase)

    def derive(self, final: bool = False) -> tuple[str, str]:
        """Return (reasoning, answer) as the client should see them now (``final``: the
        text is complete, hold nothing back)."""
        reasoning: list[str | None] = []
        answer: list[str | None] = []
        tools: list[str] = []  # site-tool output: where 2026 citation ids are resolved
        text, pos, end = self.text, 0, len(self.text)
        while pos < end:
            match = _BLOCK_OPEN.search(text, pos)
            start = match.start() if match else end
            plain_end = start if match else _held_tail(text, pos, end)
            self._split_plain(pos, plain_end, reasoning, answer, tools)
            if not match:
                break
            close = _BLOCK_CLOSE[match[1]]
            stop = text.find(close, match.end())
            body_end = end if stop < 0 else stop
            reasoning.append(None)
            answer.append(None)
            if match[1] == "details":
                reasoning += (self._thinking_of(match.end(), body_end, closed=stop >= 0), None)
            elif stop >= 0:
                tools.append(text[match.end() : stop])
            pos = end if stop < 0 else stop + len(close)
        thinking, said = _join(reasoning), _join(answer)
        if "【" in said or "【" in thinking:
            refs = references("\n".join(tools))
            thinking, said = linkify(thinking, refs, final), linkify(said, refs, final)
        return thinking.strip(), said.strip()

    def _split_plain(
        self,
        pos: int,
        end: int,
        reasoning: list[str | None],
        answer: list[str | None],
        tools: list[str],
    ) -> None:
        if pos >= end:
            return
        starts, kinds = self._starts, self._kinds
        i = bisect.bisect_right(starts, pos) - 1
        while pos < end:
            nxt = starts[i + 1] if i + 1 < len(starts) else end
            piece_end = min(nxt, end)
            kind = kinds[i]
            if kind == KIND_THINK:
                _add(reasoning, self.text[pos:piece_end])
                answer.append(None)
            elif kind == KIND_ANSWER:
                _add(answer, self.text[pos:piece_end])
                reasoning.append(None)
            else:
                # Site-tool output separates what is around it, like a block.
                tools.append(self.text[pos:piece_end])
                reasoning.append(None)
                answer.append(None)
            pos, i = piece_end, i + 1

    def _thinking_of(self, pos: int, end: int, closed: bool) -> str:
        """The reasoning inside a ``<details>`` block body (``pos`` is after ``<details``)."""
        text = self.text
        gt = text.find(">", pos, end)
        if gt < 0:
            return ""
        pos = gt + 1
        while pos < end and text[pos] in "\r\n":
            pos += 1
        if text.startswith(_SUMMARY_OPEN, pos):
            close = text.find(_SUMMARY_CLOSE, pos, end)
            if close < 0:
                return ""
            pos = close + len(_SUMMARY_CLOSE)
        elif _SUMMARY_OPEN.startswith(text[pos:end]):
            return ""
        if not closed:
            lt = text.rfind("<", max(pos, end - 11), end)
            if lt >= 0 and "</details>".startswith(text[lt:end]):
                end = lt
        line, done = self._cleaned.get(pos, (pos, ""))
        if line > end:
            line, done = pos, ""
        last = text.rfind("\n", line, end)
        if last >= 0:
            done += _QUOTE_PREFIX.sub("", text[line : last + 1])
            line = last + 1
            self._cleaned[pos] = (line, done)
        return done + _QUOTE_PREFIX.sub("", text[line:end])


def _add(pieces: list[str | None], piece: str) -> None:
    # Runs of one channel separated only by runs of the other channel (a phase switch) are
    # separate pieces; a ``None`` marks a boundary. Adjacent runs of one channel merge.
    if pieces and pieces[-1] is not None:
        pieces[-1] += piece
    else:
        pieces.append(piece)


def _join(pieces: list[str | None]) -> str:
    return "\n\n".join(p for p in (piece.strip() for piece in pieces if piece) if p)


def _held_tail(text: str, pos: int, end: int) -> int:
    """End of plain text, minus a trailing fragment that may be a block tag arriving."""
    lt = text.rfind("<", max(pos, end - 10), end)
    if lt >= 0 and any(tag.startswith(text[lt:end]) for tag in _HELD_TAGS):
        return lt
    return end


class StreamingText:
    """Turns successive derivations into deltas that are never taken back.

    ``advance()`` returns what grew in (reasoning, answer) since the last call. If an edit
    rewrote text that was already sent (never seen in captures), only what extends past the
    sent length is emitted; the final, non-streamed answer is always the full derivation.
    """

    __slots__ = ("rewrites", "sent_answer", "sent_reasoning", "text")

    def __init__(self) -> None:
        self.text = AnswerText()
        self.sent_reasoning = ""
        self.sent_answer = ""
        self.rewrites = 0

    def __repr__(self) -> str:
        return (
            f"<StreamingText sent={len(self.sent_reasoning)}+{len(self.sent_answer)} "
            f"rewrites={self.rewrites} {self.text!r}>"
        )

    def advance(self, final: bool = False) -> tuple[str, str]:
        reasoning, answer = self.text.derive(final)
        r_delta = self._grown(self.sent_reasoning, reasoning)
        a_delta = self._grown(self.sent_answer, answer)
        if r_delta:
            self.sent_reasoning = reasoning
        if a_delta:
            self.sent_answer = answer
        return r_delta, a_delta

    def _grown(self, sent: str, now: str) -> str:
        if len(now) <= len(sent):
            if not sent.startswith(now):
                self.rewrites += 1
            return ""
        if not now.startswith(sent):
            self.rewrites += 1
        return now[len(sent) :]
