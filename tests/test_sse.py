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
