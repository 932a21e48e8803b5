"""Continued chats' plan (``server.core.continuation``) and the upstream file API's shapes
(``server.zai.files``) called directly: which turns go to the upstream when a stored chat
can go on, every history that must start a fresh chat instead, and the multipart upload read
back by a real multipart parser."""

from dataclasses import replace

import pytest
from tornado.httputil import HTTPFile, parse_body_arguments

from server.core.chat import Conversation, Image, ToolSpec, Turn
from server.core.continuation import (
    Continuations,
    Plan,
    conversation_key,
    history_digest,
)
from server.core.models import STATIC
from server.zai.files import FILES_PATH, file_entry, image_parts, upload_body, uploaded
from server.zai.identity import Credential
from state.conversations import Mapping

MODEL = STATIC.rows["glm-4.7"]
FIRST = [Turn("system", "Be brief."), Turn("user", "Hi, I am Ada.")]
ANSWER = "Hello Ada."


def _mapping(history: list[Turn] = FIRST, answer: str = ANSWER) -> Mapping:
    """What the store holds after the first turn was answered, as ``done`` writes it."""
    saved: list[Mapping] = []

    class Store:
        def save(self, thread, token, mapping) -> None:
            saved.append(mapping)

    plan = Plan(Conversation(MODEL, history), history, "chat-1", None, "msg-1", True)
    Continuations(Store(), 1.0).done(None, Credential("t" * 40, "u"), plan, answer)
    return saved[0]


def _plan(turns: list[Turn], mapping: Mapping | None, **kw) -> Plan:
    conv = Conversation(MODEL, turns, **kw)
    return Continuations(None, 1.0).plan(conv, Credential("t" * 40, "u", mapping=mapping))


NEXT = [*FIRST, Turn("assistant", ANSWER), Turn("user", "What is my name?")]


def test_a_history_that_extends_the_stored_one_sends_only_the_new_turns():
    plan = _plan(NEXT, _mapping())
    assert plan.continued and plan.chat_id == "chat-1" and plan.parent_id == "msg-1"
    assert [t.text for t in plan.conv.turns] == ["What is my name?"]
    assert plan.history == NEXT and plan.message_id != "msg-1"


def test_the_stored_mapping_counts_the_history_and_hashes_it():
    mapping = _mapping()
    assert (mapping.chat_id, mapping.parent_id, mapping.count) == ("chat-1", "msg-1", 2)
    assert mapping.prefix == history_digest(FIRST) and mapping.answer


def test_no_mapping_starts_a_fresh_chat_with_the_whole_history():
    plan = _plan(NEXT, None)
    assert not plan.continued and plan.conv.turns == NEXT and plan.chat_id != "chat-1"


@pytest.mark.parametrize(
    "turns",
    [
        # an edited earlier turn
        [FIRST[0], Turn("user", "Hi, I am Bob."), Turn("assistant", ANSWER), NEXT[-1]],
        # a regenerated (different) answer
        [*FIRST, Turn("assistant", "Hi there."), NEXT[-1]],
        # nothing after the answer
        [*FIRST, Turn("assistant", ANSWER)],
        # a prefilled assistant turn at the end
        [*NEXT, Turn("assistant", "Your name")],
        # a new system turn after the answer
        [*FIRST, Turn("assistant", ANSWER), Turn("system", "new rule"), NEXT[-1]],
        # a shorter history than the stored one
        [Turn("user", "What is my name?")],
    ],
)
def test_a_history_that_does_not_extend_the_stored_one_starts_a_fresh_chat(turns):
    plan = _plan(turns, _mapping())
    assert not plan.continued and plan.conv.turns == turns


def test_the_answer_is_not_compared_when_it_could_not_be_kept_verbatim():
    unchecked = replace(_mapping(), answer="")  # stop sequences or tools were in play
    turns = [*FIRST, Turn("assistant", "cut short"), NEXT[-1]]
    assert _plan(turns, unchecked).continued


def test_stop_sequences_or_tools_make_the_answer_uncheckable():
    assert _plan(NEXT, None).checkable
    assert not _plan(NEXT, None, stop=["END"]).checkable
    assert not _plan(NEXT, None, tools=[ToolSpec("f")]).checkable


def test_fresh_ignores_the_mapping():
    conv = Conversation(MODEL, NEXT)
    plan = Continuations(None, 1.0).plan(conv, Credential("t" * 40, "u", mapping=_mapping()), True)
    assert not plan.continued


def test_a_conversation_key_is_per_caller_and_never_the_raw_name():
    key = conversation_key("key-a", "my-thread")
    assert "my-thread" not in key and len(key) == 32
    assert key != conversation_key("key-b", "my-thread")
    assert key == conversation_key("key-a", "my-thread")


def test_the_history_digest_sees_roles_texts_and_images():
    base = history_digest([Turn("user", "hi")])
    assert base != history_digest([Turn("system", "hi")])
    assert base != history_digest([Turn("user", "hi", [Image("p", digest="ab")])])
    assert history_digest([Turn("user", "a"), Turn("user", "b")]) != history_digest(
        [Turn("user", "a\x00user\x00b")]
    )


def test_a_thread_is_claimed_only_for_a_named_conversation():
    conts = Continuations(None, 1.0)
    assert conts.thread(Conversation(MODEL, NEXT)) is None
    one = conts.thread(Conversation(MODEL, NEXT, thread="k", request_id="r1"))
    two = conts.thread(Conversation(MODEL, NEXT, thread="k", request_id="r1"))
    assert one.key == two.key == "k" and one.holder != two.holder


# files


def test_the_upload_is_one_file_field_a_multipart_parser_reads_back():
    data = b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n\x00\xff"
    body, content_type = upload_body(data, "a.png", "image/png")
    args: dict = {}
    files: dict[str, list[HTTPFile]] = {}
    parse_body_arguments(content_type, body, args, files)
    [file] = files["file"]
    assert (file.filename, file.content_type, file.body) == ("a.png", "image/png", data)


def test_two_uploads_use_different_boundaries():
    assert upload_body(b"x", "a", "image/png")[1] != upload_body(b"x", "a", "image/png")[1]


def test_an_upload_answer_is_kept_whole_and_one_without_an_id_refused():
    answer = uploaded(b'{"id": "f-1", "filename": "a.png", "meta": {"size": 9}, "extra": 1}')
    assert answer["extra"] == 1
    for bad in (b"<html>", b"[]", b'{"id": ""}', b'{"id": 5}'):
        with pytest.raises(ValueError):
            uploaded(bad)


def test_a_file_entry_points_at_its_content_and_its_user_message():
    file = {"id": "f-1", "meta": {"name": "cat.png", "size": 9}}
    entry = file_entry(file, "msg-9")
    assert entry["url"] == f"{FILES_PATH}f-1/content" and entry["ref_user_msg_id"] == "msg-9"
    assert (entry["name"], entry["size"], entry["file"]) == ("cat.png", 9, file)
    assert file_entry({"id": "f-2", "meta": "odd"}, "m", "/v9/files/")["url"] == (
        "/v9/files/f-2/content"
    )


def test_image_parts_reference_files_by_id_after_the_text():
    assert image_parts("look", ["f-1", "f-2"]) == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "f-1"}},
        {"type": "image_url", "image_url": {"url": "f-2"}},
    ]
    assert image_parts("", ["f-1"])[0]["type"] == "image_url"
