"""One channel a client sees (reasoning or answer), built as the upstream text is read.

Owns ``Channel`` and ``Rope``. The parser in ``text`` hands a channel pieces of plain text and
boundaries (a block or a phase switch); the channel joins the pieces by exactly one blank line,
strips each piece and the whole, and turns the site's citation markers into markdown links,
holding back only what may still change (trailing whitespace, a marker still arriving), so
what it has in ``out`` only ever grows while the upstream appends. ``out`` is a ``Rope``: a
few large strings, so a 2 MB answer is not a list of 170,000 deltas, and slicing or
truncating near its end costs what it touches. ``valid`` makes text sendable (surrogate
halves paired, a lone half as U+FFFD).
"""

import bisect
import re
from collections.abc import Callable

from server.zai.citations import MARKER, MAX_MARKER, link

__all__ = ["Channel", "ChannelState", "Rope", "valid"]

_SURROGATE = re.compile("[\ud800-\udfff]")

# A Channel at a checkpoint (``Channel.state``): the size of ``out``, then the flags and
# held text that decide how the next piece joins: _open, _any, _ws, _held, _started, _tail_ws.
ChannelState = tuple[int, bool, bool, str, str, bool, str]


class Rope:
    """Appended strings, kept as a few large parts merged like a binary counter (each
    character is copied O(log n) times), so slicing near the end and truncating cost what they
    touch, not the whole. Small appends wait in a list until the rope is read."""

    __slots__ = ("_small", "_small_size", "ends", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.ends: list[int] = []
        self._small: list[str] = []
        self._small_size = 0

    @property
    def size(self) -> int:
        return (self.ends[-1] if self.ends else 0) + self._small_size

    def append(self, piece: str) -> None:
        self._small.append(piece)
        self._small_size += len(piece)
        if len(self._small) >= 64:
            self._settle()

    def _settle(self) -> None:
        if not self._small:
            return
        piece = "".join(self._small)
        self._small.clear()
        self._small_size = 0
        parts, ends = self.parts, self.ends
        while parts and len(parts[-1]) <= len(piece):
            piece = parts.pop() + piece
            ends.pop()
        parts.append(piece)
        ends.append((ends[-1] if ends else 0) + len(piece))

    def slice(self, start: int, stop: int) -> str:
        if start >= stop:
            return ""
        self._settle()
        i = bisect.bisect_right(self.ends, start)
        out, pos = [], start
        while pos < stop and i < len(self.parts):
            base = self.ends[i] - len(self.parts[i])
            out.append(self.parts[i][pos - base : stop - base])
            pos = self.ends[i]
            i += 1
        return "".join(out)

    def truncate(self, size: int) -> None:
        self._settle()
        i = bisect.bisect_right(self.ends, size)
        if i < len(self.parts):
            base = self.ends[i] - len(self.parts[i])
            keep = self.parts[i][: size - base]
            del self.parts[i:], self.ends[i:]
            if keep:
                self.append(keep)


class Channel:
    """One channel the client sees (reasoning or answer), built as the text is read: pieces
    joined by one blank line, each piece and the whole stripped, citation markers linked.

    Trailing whitespace and a marker still arriving are held (they are not in ``out`` yet);
    ``tail(final=True)`` is what the end of the answer releases.
    """

    __slots__ = (
        "_any",
        "_held",
        "_open",
        "_refs",
        "_started",
        "_tail_ws",
        "_ws",
        "out",
        "owed",
        "sent",
    )

    def __init__(self, refs: Callable[[], dict[str, tuple[str, str]]]) -> None:
        self.out = Rope()
        self.sent = 0  # how much a streaming client already has (kept on rewinds)
        # (start, text): what a client has from ``start`` on that a rewind took out of ``out``
        # and the upstream has not written back yet; compared as it comes back.
        self.owed: tuple[int, str] | None = None
        self._refs = refs
        self._open = False  # inside a piece that has shown text
        self._any = False  # some piece has shown text: the next one needs a blank line
        self._ws = ""  # whitespace ending the open piece: shown only if text follows
        self._held = ""  # a citation marker still arriving, with the blank before it
        self._started = False  # the strip of the whole: leading whitespace is gone
        self._tail_ws = ""  # whitespace after linking, shown only if text follows

    def state(self) -> ChannelState:
        return (
            self.out.size,
            self._open,
            self._any,
            self._ws,
            self._held,
            self._started,
            self._tail_ws,
        )

    def restore(self, state: ChannelState) -> None:
        size = state[0]
        (_, self._open, self._any, self._ws, self._held, self._started, self._tail_ws) = state
        owed = self.owed
        if owed is None and size < self.sent:
            self.owed = (size, self.out.slice(size, self.sent))
        elif owed is not None and size < owed[0]:
            self.owed = (size, self.out.slice(size, owed[0]) + owed[1])
        self.out.truncate(size)

    def text(self, piece: str) -> None:
        if not self._open:
            piece = piece.lstrip()
            if not piece:
                return
            lead = "\n\n" if self._any else ""
            self._open = self._any = True
        else:
            lead = self._ws
        kept = piece.rstrip()
        if not kept:
            self._ws = lead + piece
            return
        self._ws = piece[len(kept) :]
        if lead:
            kept = lead + kept
        if self._held or self._tail_ws or not self._started or "【" in kept:
            self._link(kept)
        else:
            self.out.append(kept)

    def boundary(self) -> None:
        self._open = False
        self._ws = ""

    def _link(self, piece: str) -> None:
        if self._held:
            piece, self._held = self._held + piece, ""
        if "【" in piece:
            at = piece.rfind("【")
            if "】" not in piece[at:] and len(piece) - at <= MAX_MARKER:
                cut = at - 1 if at and piece[at - 1].isspace() else at
                piece, self._held = piece[:cut], piece[cut:]
            if "【" in piece:
                refs = self._refs()
                piece = MARKER.sub(lambda m: link(m, refs), piece)
        self._strip(piece)

    def _strip(self, piece: str) -> None:
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return
            self._started = True
        kept = piece.rstrip()
        if not kept:
            self._tail_ws += piece
            return
        tail = piece[len(kept) :]
        if self._tail_ws:
            kept = self._tail_ws + kept
        self._tail_ws = tail
        self.out.append(kept)

    def tail(self, final: bool) -> str:
        """What the end of the answer adds to ``out`` (a marker held back, linked or not)."""
        if not final or not self._held:
            return ""
        refs = self._refs()
        piece = MARKER.sub(lambda m: link(m, refs), self._held)
        if not self._started:
            piece = piece.lstrip()
        kept = piece.rstrip()
        return self._tail_ws + kept if kept else ""


def valid(text: str) -> str:
    """``text`` as it can be sent: surrogate halves paired, a lone one as U+FFFD."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
