"""Edits counted as the page counts them, at the text-model level (PROTOCOL.md section 6.1).

``edit_index`` is in UTF-16 code units (the page does ``content.substring(0, edit_index)``),
an ``edit_content`` without an index starts at 0, a frame with ``content`` replaces the text.
A cut inside a surrogate pair keeps the first half, as JavaScript does (U+FFFD for the client
unless the edit completes the character). What a streaming client is sent adds up to the
final text when an edit rewinds and restates it; when an edit changes text already sent, the
client keeps what it has and gets the final text from the changed word on, unless
``holdback`` covered the change.
"""

import json

import pytest

from server.zai.stream import AnswerStream
from server.zai.streamed import StreamingText
from server.zai.text import AnswerText, utf16_len


def frames(*datas: dict) -> bytes:
    out = [{"type": "chat:completion", "data": d} for d in datas]
    out.append({"type": "chat:completion", "data": {"phase": "done", "done": True}})
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in out)


def streamed(body: bytes, holdback: int = 0, cut: int = 0) -> tuple[AnswerStream, str]:
    stream = AnswerStream("m", holdback)
    cut = cut or len(body)
    got = [stream.feed(body[i : i + cut])[1] for i in range(0, len(body), cut)]
    got.append(stream.end()[1])
    return stream, "".join(got)


def test_edit_index_counts_utf16_units_after_astral_characters():
    text = AnswerText()
    text.append("I \U0001f600 emoji \U0001d518 and \U00020000:", "answer")
    before = "I \U0001f600 emoji \U0001d518 and \U00020000"
    assert utf16_len(before) == len(before) + 3
    text.edit(utf16_len(before), " ok.", "answer")
    assert text.derive(final=True) == ("", before + " ok.")


def test_bmp_edits_are_unchanged():
    text = AnswerText()
    text.append("héllo wörld 中文", "answer")
    text.edit(6, "wörld!", "answer")
    assert text.text == "héllo wörld!"


def test_a_cut_inside_a_pair_keeps_the_half_as_the_page_does():
    text = AnswerText()
    text.append("a\U0001f600b", "answer")
    text.edit(2, "c", "answer")  # JS: "a\ud83d" + "c"
    assert text.derive(final=True) == ("", "a\ufffdc")
    text.edit(3, "d", "answer")  # the half still counts one unit, where the page has it
    assert text.derive(final=True) == ("", "a\ufffdcd")
    text.derive(final=True)[1].encode()  # always sendable


def test_an_edit_that_brings_the_second_half_completes_the_character():
    body = (
        b'data: {"data":{"delta_content":"a\\ud83d\\ude00 ","phase":"answer"}}\n\n'
        b'data: {"data":{"edit_index":2,"edit_content":"\\ude00 ok","phase":"answer"}}\n\n'
        b'data: {"data":{"delta_content":" \\ud83c","phase":"answer"}}\n\n'
        b'data: {"data":{"delta_content":"\\udf89!","phase":"answer"}}\n\n'
        b'data: {"data":{"phase":"done","done":true}}\n\n'
    )
    for cut in (1, 7, len(body)):
        stream, got = streamed(body, cut=cut)
        assert stream.final() == ("", "a\U0001f600 ok \U0001f389!")
        assert got == "a\U0001f600 ok \U0001f389!"
        assert stream.malformed == 0


def test_edit_content_without_index_starts_at_zero():
    stream, got = streamed(
        frames(
            {"delta_content": "Hello", "phase": "answer"},
            {"edit_content": "Hello world", "phase": "answer"},
        )
    )
    assert (stream.final(), got) == (("", "Hello world"), "Hello world")


def test_a_content_frame_is_a_snapshot_of_the_whole_text():
    stream, got = streamed(
        frames(
            {"delta_content": "Sure \U0001f44d", "phase": "answer"},
            {"content": "Sure \U0001f44d here", "phase": "answer"},
            {"delta_content": " it is", "phase": "answer"},
            {"content": "", "delta_content": "!", "phase": "answer"},  # a delta wins
        )
    )
    assert (stream.final(), got) == (
        ("", "Sure \U0001f44d here it is!"),
        "Sure \U0001f44d here it is!",
    )


def test_a_rewind_that_restates_streamed_text_repeats_nothing():
    text = "Hi \U0001f44b there. What would you like to"
    start = utf16_len(text[: text.index(" What")])
    body = frames(
        {"delta_content": text[:10], "phase": "answer"},
        {"delta_content": text[10:], "phase": "answer"},
        {"phase": "other", "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
        {"edit_index": start, "edit_content": " What would you like to discuss?", "phase": "other"},
    )
    for cut in (5, 64, len(body)):
        stream, got = streamed(body, cut=cut)
        assert got == stream.final()[1] == "Hi \U0001f44b there. What would you like to discuss?"
        assert stream.text.rewrites == 0


def rewrite_body() -> bytes:
    text = "The capital of Australia is Sydney, a big city."
    return frames(
        {"delta_content": text, "phase": "answer"},
        {"edit_index": text.index(" Sydney"), "edit_content": " Canberra.", "phase": "answer"},
    )


def test_a_rewind_that_changes_sent_text_cannot_unsend_it():
    # Two reads: the client has the first sentence before the edit arrives.
    body = rewrite_body()
    stream = AnswerStream("m")
    cut = body.index(b"data: ", 1)
    sent = stream.feed(body[:cut])[1] + stream.feed(body[cut:])[1] + stream.end()[1]
    assert stream.final() == ("", "The capital of Australia is Canberra.")
    # What was sent stays; the stream goes on with the final text from the changed word.
    assert sent == "The capital of Australia is Sydney, a big city. Canberra."
    assert stream.text.rewrites == 1


def test_holdback_covers_a_rewind_within_it():
    body = rewrite_body()
    stream = AnswerStream("m", holdback=24)
    cut = body.index(b"data: ", 1)
    sent = stream.feed(body[:cut])[1] + stream.feed(body[cut:])[1] + stream.end()[1]
    assert sent == stream.final()[1] == "The capital of Australia is Canberra."
    assert stream.text.rewrites == 0


@pytest.mark.parametrize("holdback", [0, 3])
def test_holdback_releases_everything_at_the_end(holdback):
    streaming = StreamingText(holdback)
    sent = so_far = ""
    for piece in ("one ", "two ", "three"):
        streaming.text.append(piece, "answer")
        so_far += piece
        sent += streaming.advance()[1]
        assert so_far.startswith(sent) and len(sent) <= max(0, len(so_far.rstrip()) - holdback)
    sent += streaming.advance(final=True)[1]
    assert sent == "one two three"


def test_the_2025_closing_edit_still_lands_by_code_unit():
    opener = '<details type="reasoning" done="false">\n<summary>Thinking…</summary>\n> '
    text = AnswerText()
    text.append(opener + "hmm \U0001f914", "thinking")
    assert utf16_len(opener[:32]) == 32
    text.edit(
        32,
        'true" duration="1">\n<summary>Thought</summary>\n> hmm \U0001f914\n</details>\nHi',
        "answer",
    )
    assert text.derive(final=True) == ("hmm \U0001f914", "Hi")
