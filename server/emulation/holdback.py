"""How much of a streamed text's end must wait, because it may be the start of a marker.

Owns ``partial_suffix``, shared by the tool-call scanner (``<tool_call>``) and the stop
sequences: both send text as soon as it is certain and hold back only a possible beginning.
"""

__all__ = ["partial_suffix"]


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
