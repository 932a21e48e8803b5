"""The SSE reader survives a split at any byte, including inside UTF-8 characters and CRLF."""

import random

import pytest

from server.zai.sse import SSEReader
from tests.recorded import STREAMS, sse_body


def read_all(body: bytes, cuts: list[int]) -> list[bytes]:
    reader, out, prev = SSEReader(), [], 0
    for cut in [*cuts, len(body)]:
        out += reader.feed(body[prev:cut])
        prev = cut
    return out + reader.close()


def test_every_offset_of_a_capture():
    body = sse_body("stream_glm5_plain_thinking")
    whole = read_all(body, [])
    assert len(whole) == 45
    for cut in range(1, len(body)):
        assert read_all(body, [cut]) == whole


@pytest.mark.parametrize("name", STREAMS)
def test_random_splits_and_single_bytes(name: str):
    body = sse_body(name)
    whole = read_all(body, [])
    assert whole and all(p.startswith(b"{") for p in whole)
    rng = random.Random(name)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, 40)))
        assert read_all(body, cuts) == whole
    assert read_all(body, list(range(1, len(body)))) == whole


def test_crlf_comments_multiline_and_unterminated_last_event():
    body = b": keep-alive\r\n\r\ndata: a\r\ndata: b\r\n\r\nevent: x\ndata: c\n\ndata: d"
    expected = [b"a\nb", b"c", b"d"]
    for cut in range(1, len(body)):
        assert read_all(body, [cut]) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"data: a\n\ndata: b\n\n", [b"a", b"b"]),  # the usual read: one split
        (b"data: a\n\n\n\ndata: b\n\n", [b"a", b"b"]),  # an empty event between
        (b"data: \n\ndata: b\n\n", [b"b"]),  # an empty payload says nothing
        (b"data: a\n\ndata:b\n\n", [b"a", b"b"]),  # no space after the colon
        (b"data:  a\n\n", [b" a"]),  # only the first space goes
        (b"data: a\n\nevent: x\ndata: c\n\n", [b"a", b"c"]),
        (b"data: a\ndata: b\n\ndata: c\n\n", [b"a\nb", b"c"]),
        (b"data: a\n\n: ping\n\ndata: c\n\n", [b"a", b"c"]),
        (b'data: {"t": "x\\n\\ndata: y"}\n\n', [b'{"t": "x\\n\\ndata: y"}']),  # escaped
    ],
)
def test_events_of_one_read_whatever_their_shape(body: bytes, expected: list[bytes]):
    assert SSEReader().feed(body) == expected
    assert read_all(body, list(range(1, len(body)))) == expected
