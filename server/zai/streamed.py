"""What a streaming client is sent of the answer text: deltas that are never taken back.

Owns ``StreamingText``. The text model's channels only grow while the upstream appends; an edit
may rewind them below what a client already has. What the upstream writes back there is
compared with what was sent, so a rewind that restates text sends nothing twice; one that
changes words a client has cannot unsend them (see the class). ``holdback`` keeps the tail of
each channel until more follows, for edits that change what was just written.
"""

from server.zai.channel import Channel, valid
from server.zai.text import ANSWER, REASONING, AnswerText

__all__ = ["StreamingText"]


class StreamingText:
    """Turns the growing channels into deltas that are never taken back.

    ``advance()`` returns what grew in (reasoning, answer) since the last call, keeping the
    last ``holdback`` characters of each channel until more follows or the answer ends. When
    an edit rewinds text a client already has, what the upstream writes back is compared with
    what was sent: the same characters are not sent again. Different ones cannot be unsent:
    the stream goes on with the final text from the start of the word that changed, after a
    space (``rewrites`` counts it), so nothing is lost or spliced mid-word; the final,
    non-streamed answer (``AnswerText.derive(final=True)``) is always the exact final text.
    """

    __slots__ = ("_gap", "holdback", "rewrites", "text")

    def __init__(self, holdback: int = 0) -> None:
        self.text = AnswerText()
        self.holdback = holdback
        self.rewrites = 0
        self._gap = [False, False]  # per channel: the next delta needs a space first

    def __repr__(self) -> str:
        sent = "+".join(str(c.sent) for c in self.text.channels)
        return f"<StreamingText sent={sent} rewrites={self.rewrites} {self.text!r}>"

    def advance(self, final: bool = False) -> tuple[str, str]:
        return self._grown(REASONING, final), self._grown(ANSWER, final)

    def _grown(self, which: int, final: bool) -> str:
        channel: Channel = self.text.channels[which]
        out = channel.out
        size = out.size
        if channel.owed is not None:
            start, owed = channel.owed
            back = min(size, start + len(owed))
            now = out.slice(start, back)
            if now != owed[: back - start]:
                self._diverged(which, start + _common(now, owed), owed)
            elif back == start + len(owed):
                channel.owed = None
            else:
                channel.owed = (back, owed[back - start :])
                if not final:
                    return ""
        target = size if final else size - self.holdback
        delta = out.slice(channel.sent, target) if target > channel.sent else ""
        if final:
            delta += channel.tail(True)
        elif delta and "\ud800" <= delta[-1] <= "\udbff":
            delta = delta[:-1]  # the first half of a pair: the next delta may complete it
        channel.sent += len(delta)
        if delta and self._gap[which]:
            self._gap[which] = False
            if not delta[0].isspace():
                delta = " " + delta
        return valid(delta)

    def _diverged(self, which: int, at: int, owed: str) -> None:
        """The client has text the upstream changed from ``at`` on: go on from the start of
        the word there (a space first unless the client's text ends in one)."""
        channel = self.text.channels[which]
        self.rewrites += 1
        channel.owed = None
        low = max(0, at - 64)
        before = channel.out.slice(low, at)
        cut = len(before)
        while cut and not before[cut - 1].isspace():
            cut -= 1
        # A word longer than what is looked at restarts at the change itself.
        channel.sent = low + cut if cut or not low else at
        self._gap[which] = not owed[-1:].isspace()


def _common(a: str, b: str) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
