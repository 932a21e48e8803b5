"""The upstream answer, read frame by frame, gives exactly what the capture's text says.

For every recorded stream shape: fed whole, fed split at random bytes, and (for capture 01)
split at every byte, the streamed deltas add up to the expected reasoning and content, equal
the final text, and never take anything back.
"""

import random

import pytest

from server.core.chat import Usage
from server.core.errors import GatewayError
from server.zai.stream import AnswerStream
from server.zai.text import AnswerText
from tests.recorded import STREAMS, expected, sse_body


def run(body: bytes, cuts: list[int]) -> tuple[AnswerStream, str, str]:
    stream, reasoning, content, prev = AnswerStream("m"), [], [], 0
    for cut in [*cuts, len(body)]:
        r, c = stream.feed(body[prev:cut])
        reasoning.append(r)
        content.append(c)
        prev = cut
    r, c = stream.end()
    return stream, "".join([*reasoning, r]), "".join([*content, c])


@pytest.mark.parametrize("name", STREAMS)
def test_stream_gives_what_the_capture_says(name: str):
    want = expected(name)
    body = sse_body(name)
    rng = random.Random(name)
    for cuts in ([], sorted(rng.sample(range(1, len(body)), 30)), list(range(1, len(body), 7))):
        stream, reasoning, content = run(body, cuts)
        assert reasoning == want["reasoning_content"]
        if "streamed_content" in want:
            # Text sent before a content-security stop stays sent; how much depends on reads.
            assert want["streamed_content"].startswith(content)
        else:
            assert content == want["content"]
        assert stream.final() == (want["reasoning_content"], want["content"])
        assert stream.text.rewrites == 0
        assert stream.finish_reason == want["finish_reason"]
        usage = stream.usage or Usage()
        got = {k: getattr(usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        assert got == {k: want["usage"][k] for k in got}


def test_capture_01_split_at_every_byte():
    name = "stream_glm5_plain_thinking"
    want = expected(name)
    body = sse_body(name)
    for cut in range(1, len(body)):
        _, reasoning, content = run(body, [cut])
        assert (reasoning, content) == (want["reasoning_content"], want["content"]), cut


def test_edit_truncates_then_appends_by_code_point():
    text = AnswerText()
    text.append("héllo wörld", "answer")
    text.edit(6, "wörld!", "answer")
    assert text.text == "héllo wörld!"
    text.edit(0, "", "other")
    assert text.derive() == ("", "")


def test_tag_arriving_in_pieces_is_held_back():
    text = AnswerText()
    text.append("Answer <det", "answer")
    assert text.derive() == ("", "Answer")
    text.append('ails type="reasoning" done="false">\n<summary>Thinking…</summary>\n> a\n> b', "x")
    assert text.derive() == ("a\nb", "Answer")
    text.append("\n</deta", "x")
    assert text.derive() == ("a\nb", "Answer")
    text.append("ils>\nmore", "answer")
    assert text.derive() == ("a\nb", "Answer\n\nmore")


def test_a_less_than_sign_that_is_not_a_tag_is_not_held():
    text = AnswerText()
    text.append("if a <b and c > d", "answer")
    assert text.derive() == ("", "if a <b and c > d")


def test_usage_before_last_delta_and_repeats_counted_once():
    frames = [
        b'{"data":{"delta_content":"Hi","phase":"answer"}}',
        b'{"data":{"phase":"other","usage":{"prompt_tokens":2,"completion_tokens":3,'
        b'"total_tokens":5}}}',
        b'{"data":{"delta_content":" there","phase":"answer"}}',
        b'{"data":{"phase":"answer","usage":{"prompt_tokens":2,"completion_tokens":3,'
        b'"total_tokens":5}}}',
        b'{"data":{"phase":"done","done":true}}',
        b'{"data":{"delta_content":" after done is ignored","phase":"answer"}}',
    ]
    stream = AnswerStream()
    stream.feed(b"".join(b"data: " + f + b"\n\n" for f in frames))
    stream.end()
    assert stream.final() == ("", "Hi there")
    assert (stream.usage.prompt_tokens, stream.usage.total_tokens) == (2, 5)


def test_stream_that_stops_before_done_is_a_failure():
    stream = AnswerStream()
    stream.feed(b'data: {"data":{"delta_content":"Hi","phase":"answer"}}\n\n')
    with pytest.raises(GatewayError) as info:
        stream.end()
    assert info.value.kind == "unavailable"


def test_malformed_frame_is_skipped_not_fatal():
    stream = AnswerStream()
    stream.feed(b"data: {not json\n\ndata: [DONE]\n\n")
    stream.end()
    assert stream.malformed == 1 and stream.done
