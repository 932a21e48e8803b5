"""Frame decoding (``server.zai.frames.decode_frame``) on its edge cases, PROTOCOL.md sections
3, 4 and 6.1: both spacings, a stray ``[DONE]`` in either form, unknown fields, the in-band
error in either place, usage's two cached-token shapes, half a surrogate pair, and what is
not a frame at all."""

import json

import msgspec
import pytest

from server.zai.frames import DONE, UpstreamUsage, decode_frame
from server.zai.stream import AnswerStream


def _frame(data: object) -> bytes:
    return json.dumps({"type": "chat:completion", "data": data}).encode()


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type": "chat:completion", "data": {"delta_content": "hi", "phase": "answer"}}',
        b'{"type":"chat:completion","data":{"delta_content":"hi","phase":"answer"}}',
    ],
)
def test_2025_spacing_and_2026_compact_json_decode_alike(payload: bytes):
    frame = decode_frame(payload)
    assert frame is not None and (frame.delta_content, frame.phase) == ("hi", "answer")


@pytest.mark.parametrize("payload", [b"[DONE]", b'{"data": "[DONE]"}'])
def test_a_stray_done_in_either_form_ends_the_answer(payload: bytes):
    frame = decode_frame(payload)
    assert frame is DONE and frame.is_done


@pytest.mark.parametrize("data", [{"phase": "done"}, {"done": True, "phase": "other"}])
def test_a_done_phase_or_flag_ends_the_answer(data: dict):
    assert decode_frame(_frame(data)).is_done


def test_an_answer_frame_does_not_end_the_answer():
    assert not decode_frame(_frame({"phase": "answer", "delta_content": "x"})).is_done


def test_unknown_fields_are_ignored():
    frame = decode_frame(_frame({"phase": "answer", "delta_content": "x", "new_field": {"a": 1}}))
    assert frame.delta_content == "x"


def test_a_frame_without_data_says_nothing():
    assert decode_frame(b'{"type": "ping"}') is None


@pytest.mark.parametrize("payload", [b"not json", b'{"type": "chat:completion", "data": 5}'])
def test_what_is_not_a_frame_raises_a_decode_error(payload: bytes):
    with pytest.raises(msgspec.DecodeError):
        decode_frame(payload)


def test_the_inband_error_is_found_at_the_top_or_nested_under_data():
    top = decode_frame(_frame({"error": {"code": 426, "detail": "old"}, "done": True}))
    nested = decode_frame(_frame({"data": {"error": {"code": 403, "detail": "no"}}}))
    assert (top.failure.code, nested.failure.code) == (426, 403)
    assert decode_frame(_frame({"phase": "answer"})).failure is None


def test_edit_and_snapshot_fields_are_read():
    edit = decode_frame(_frame({"edit_index": 32, "edit_content": 'true">'}))
    snapshot = decode_frame(_frame({"content": "the whole text"}))
    assert (edit.edit_index, edit.edit_content) == (32, 'true">')
    assert snapshot.content == "the whole text" and snapshot.delta_content is None


def test_site_tool_fragments_are_read():
    frame = decode_frame(
        _frame(
            {
                "phase": "tool_call",
                "delta_name": "search",
                "delta_arguments": '{"',
                "tool_name": None,
            }
        )
    )
    assert (frame.delta_name, frame.delta_arguments) == ("search", '{"')


def test_cached_tokens_are_read_from_either_usage_shape():
    assert UpstreamUsage(cached_tokens=7).cached == 7
    assert UpstreamUsage(prompt_tokens_details={"cached_tokens": 1536}).cached == 1536
    assert UpstreamUsage(prompt_tokens_details={"cached_tokens": "x"}).cached == 0
    assert UpstreamUsage().cached == 0


def test_half_a_surrogate_pair_is_decoded_not_dropped():
    # JSON.stringify of a string cut inside an emoji writes the lone high half
    payload = b'{"type":"chat:completion","data":{"phase":"answer","delta_content":"a \\ud83d"}}'
    frame = decode_frame(payload)
    assert frame is not None and frame.delta_content == "a \ud83d"


def test_a_broken_frame_with_a_surrogate_half_still_raises():
    with pytest.raises(msgspec.DecodeError):
        decode_frame(b'{"type":"chat:completion","data":{"delta_content":"\\ud83d"')


def test_an_emoji_split_across_two_frames_reaches_the_client_whole():
    # The page's JSON.stringify writes each half of the pair in its own frame
    halves = [b"a \\ud83d", b"\\ude00 b"]
    body = b"".join(
        b'data: {"type":"chat:completion","data":{"phase":"answer","delta_content":"'
        + half
        + b'"}}\n\n'
        for half in halves
    )
    body += b'data: {"type":"chat:completion","data":{"phase":"done","done":true}}\n\n'
    stream = AnswerStream("m", 0)
    shown = stream.feed(body)[1] + stream.end()[1]
    assert shown == "a \U0001f600 b"
