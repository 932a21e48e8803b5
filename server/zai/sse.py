"""Incremental Server-Sent-Events reader for the upstream's byte stream.

Owns ``SSEReader``: bytes go in as the socket delivers them, split anywhere (inside a line, a
``\\r\\n`` pair or a multi-byte UTF-8 character), and complete events' ``data`` payloads come
out as ``bytes``. Splitting happens on bytes, before any decoding, so a character cut between
two reads is never damaged: each payload is decoded only once it is whole.
"""

__all__ = ["SSEReader"]


class SSEReader:
    """Turns a chunked SSE byte stream into complete ``data`` payloads.

    >>> reader = SSEReader()
    >>> reader.feed(b'data: {"a"') + reader.feed(b': 1}\\n\\n')
    [b'{"a": 1}']
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def __repr__(self) -> str:
        return f"<SSEReader pending={len(self._buf)}B>"

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A lone trailing \r may be the first half of \r\n: the replace sees it whole next time.
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 2 :]
        events = buf[:end]
        if events.startswith(b"data: "):
            # The upstream's usual read: events of one "data: " line each. Then every
            # newline is in a separator, and one split in C cuts out all the payloads.
            payloads = events[6:].split(b"\n\ndata: ")
            if events.count(b"\n") == 2 * (len(payloads) - 1) and all(payloads):
                return payloads
        return [data for event in events.split(b"\n\n") if (data := _data_of(event))]

    def close(self) -> list[bytes]:
        """Flush an event the stream ended without a blank line after."""
        rest, self._buf = self._buf, b""
        data = _data_of(rest.rstrip(b"\r\n"))
        return [data] if data else []


def _data_of(event: bytes) -> bytes:
    if event.startswith(b"data:") and b"\n" not in event:
        return event[6:] if event[5:6] == b" " else event[5:]
    lines = [
        line[6:] if line[5:6] == b" " else line[5:]
        for line in event.split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(lines)
