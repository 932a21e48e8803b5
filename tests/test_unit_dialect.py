"""The small dialect readers of ``server/zai/`` called directly: the user id inside a token
and the auth answer (``identity``), the model list (``models``), search citations
(``citations``) and the searches the upstream ran (``search``), on the shapes PROTOCOL.md
sections 1, 3 and 6 and the recorded streams in ``cassettes/`` show."""

import base64
import json

import msgspec
import pytest

from server.core.chat import WebSearch
from server.zai.citations import MARKER, MAX_MARKER, linkify, references
from server.zai.frames import decode_frame
from server.zai.identity import Credential, credential_from_auth, user_id_of
from server.zai.models import decode_models
from server.zai.search import searches
from server.zai.sse import SSEReader
from tests.recorded import sse_body

USER_ID = "d0d30815-b85a-4270-af63-b5346a9f3b13"


def _jwt(claims: object) -> str:
    """An ES256-shaped JWT (header.payload.signature) whose payload is ``claims``, unpadded
    base64url like the real ones."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# identity


def test_the_user_id_is_the_id_claim_of_the_token():
    assert user_id_of(_jwt({"id": USER_ID, "email": "guest-1@guest.com"})) == USER_ID


@pytest.mark.parametrize("pad", range(4))
def test_a_payload_of_any_length_decodes_without_its_padding(pad: int):
    email = "x" * pad + "@guest.com"
    assert user_id_of(_jwt({"id": USER_ID, "email": email})) == USER_ID


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", "a.%%%.c", "a." + base64.urlsafe_b64encode(b"[1, 2]").decode() + ".c"],
)
def test_a_token_that_is_not_a_readable_jwt_has_no_user_id(token: str):
    assert user_id_of(token) == ""


def test_a_non_string_id_claim_is_no_user_id():
    assert user_id_of(_jwt({"id": 42})) == ""


def test_an_auth_answer_is_a_credential_with_its_own_id_and_role():
    token = _jwt({"id": "other"})
    body = json.dumps({"id": USER_ID, "role": "user", "name": "Ada", "token": token}).encode()
    cred = credential_from_auth(body)
    assert (cred.token, cred.user_id, cred.role, cred.name) == (token, USER_ID, "user", "Ada")


def test_an_auth_answer_without_id_takes_the_one_in_its_token():
    body = json.dumps({"token": _jwt({"id": USER_ID})}).encode()
    cred = credential_from_auth(body)
    assert cred.user_id == USER_ID
    assert (cred.role, cred.name) == ("guest", "Guest")


@pytest.mark.parametrize("body", [b"<html>", b"{}", b'{"id": "x"}', b"[]"])
def test_an_answer_that_is_not_an_auth_answer_raises_a_decode_error(body: bytes):
    with pytest.raises(msgspec.DecodeError):
        credential_from_auth(body)


def test_a_credential_never_shows_its_whole_token():
    token = _jwt({"id": USER_ID, "email": "someone@example.com"})
    cred = Credential(token, USER_ID, "user")
    for shown in (repr(cred), str(cred), cred.masked):
        assert token not in shown
        assert token[6:-4] not in shown
    assert "user" in repr(cred)


# models


def _listing(*rows: dict) -> bytes:
    return json.dumps({"data": list(rows)}).encode()


def test_a_model_row_keeps_its_flags_from_info_and_meta():
    body = _listing(
        {
            "id": "glm-5.3",
            "name": "GLM-5.3",
            "info": {
                "is_active": True,
                "meta": {"hidden": True, "capabilities": {"vision": True, "think": False}},
            },
        }
    )
    [model] = decode_models(body)
    assert (model.id, model.name, model.active, model.hidden) == ("glm-5.3", "GLM-5.3", True, True)
    assert model.capabilities == {"vision": True, "think": False}


def test_a_row_without_an_id_is_dropped_and_the_rest_kept():
    ids = [m.id for m in decode_models(_listing({"name": "ghost"}, {"id": "glm-4.7"}))]
    assert ids == ["glm-4.7"]


def test_activity_in_info_wins_over_the_row_and_absence_means_active():
    body = _listing(
        {"id": "a", "is_active": True, "info": {"is_active": False}},
        {"id": "b", "is_active": False},
        {"id": "c"},
    )
    assert [(m.id, m.active) for m in decode_models(body)] == [
        ("a", False),
        ("b", False),
        ("c", True),
    ]


def test_capabilities_that_are_not_flags_are_left_out():
    body = _listing({"id": "m", "info": {"meta": {"capabilities": {"mcp": ["x"], "vision": 1}}}})
    assert decode_models(body)[0].capabilities == {}


def test_unknown_fields_are_ignored():
    body = _listing({"id": "m", "owned_by": "openai", "info": {"meta": {"new": {"x": 1}}}})
    assert decode_models(body)[0].id == "m"


@pytest.mark.parametrize("body", [b"<html>", b'{"data": "nope"}', b'{"data": [{"id": 7}]}'])
def test_a_body_that_is_not_a_model_list_raises_a_decode_error(body: bytes):
    with pytest.raises(msgspec.DecodeError):
        decode_models(body)


# citations

REFS = {"turn0search0": ("Weekly roundup", "https://news.example.com/r")}


def test_a_2025_marker_carries_its_own_title_and_url():
    text = "Bandwidth matters【1†CPU Bottlenecks†https://semi.example.com/cpu】."
    assert linkify(text, {}) == "Bandwidth matters [CPU Bottlenecks](https://semi.example.com/cpu)."


def test_a_2026_marker_is_resolved_through_the_references():
    assert linkify("the main stories【turn0search0】.", REFS) == (
        "the main stories [Weekly roundup](https://news.example.com/r)."
    )


def test_a_marker_with_a_line_range_uses_its_id():
    assert (
        linkify("see【turn0search0†L3-L9】", REFS)
        == "see [Weekly roundup](https://news.example.com/r)"
    )


def test_a_marker_of_an_unknown_source_is_dropped_with_its_space():
    assert linkify("claim 【turn9search9】 stands", REFS) == "claim stands"


def test_square_brackets_in_a_title_cannot_break_the_link():
    assert linkify("x【1†A [draft] note†https://e.example/a】", {}) == (
        "x [A (draft) note](https://e.example/a)"
    )


def test_an_empty_title_shows_the_url():
    out = linkify("x【1††https://e.example/a】", {})
    assert out == "x [https://e.example/a](https://e.example/a)"


def test_text_without_markers_is_returned_as_it_is():
    text = "plain [text](http://x) with † and 】 but no opener"
    assert linkify(text, REFS) == text


def test_a_marker_still_arriving_is_held_back_until_it_closes():
    partial = "the main stories【turn0sea"
    assert linkify(partial, REFS) == "the main stories"
    assert linkify(partial + "rch0】", REFS).endswith(
        "[Weekly roundup](https://news.example.com/r)"
    )


def test_an_open_marker_is_shown_at_the_end_of_the_answer():
    assert linkify("a lone 【 bracket", REFS, final=True) == "a lone 【 bracket"


def test_an_open_bracket_longer_than_a_marker_is_not_held_back():
    text = "【" + "x" * MAX_MARKER
    assert linkify(text, REFS) == text


def test_references_are_read_from_tool_output_lines_and_glm_block_json():
    tool_text = (
        "[ref_id=turn0search0†Weekly roundup†https://news.example.com/r]\nDate: x\n"
        '{"title": "A \\"quoted\\" title", "url": "https://b.example/b", "text": "t", '
        '"ref_id": "turn0search1"}'
    )
    assert references(tool_text) == {
        "turn0search0": ("Weekly roundup", "https://news.example.com/r"),
        "turn0search1": ('A "quoted" title', "https://b.example/b"),
    }


def test_the_marker_pattern_takes_one_leading_space_only():
    assert MARKER.search("a  【1】")[0] == " 【1】"


# search, on the recorded 2026 and 2025 search streams


def _frames(name: str) -> list:
    return [f for p in SSEReader().feed(sse_body(name)) if (f := decode_frame(p)) is not None]


def test_the_2026_search_stream_gives_its_query_and_both_sources():
    frames = _frames("stream_v2_toolcall_search_2026")
    arguments = "".join(f.delta_arguments or "" for f in frames if f.phase == "tool_call")
    tool_text = "".join(f.delta_content or "" for f in frames if f.phase == "tool_response")
    [search] = searches([("search", arguments, 0)], [tool_text])
    assert search.query == "Elon Musk news this week"
    assert [url for _, url in search.results] == [
        "https://news.example.com/tech-roundup",
        "https://space.example.org/starship-update",
    ]
    assert search.results[1][0] == "Starship test flight update"


def test_the_2025_glm_block_gives_its_first_query_and_its_results():
    frames = _frames("stream_search_glmblock_2025")
    tool_text = "".join(f.edit_content or "" for f in frames if f.phase in ("tool_call", "other"))
    [search] = searches([], [tool_text])
    assert search.query == "which calculus operations are faster in concurrency on CPU"
    urls = [url for _, url in search.results]
    assert any(url.startswith("https://semiengineering.com/cpu-performance-") for url in urls)
    assert len(urls) == len(set(urls))


def test_only_search_calls_count_and_each_further_call_is_its_own_search():
    calls = [
        ("open", '{"open": [{"ref_id": "turn0search0"}]}', 0),
        ("search", '{"search_query": [{"q": "first"}, {"q": "ignored second"}]}', 0),
        ("search", '{"queries": ["again"]}', 0),
    ]
    assert searches(calls, []) == (WebSearch("first"), WebSearch("again"))


def test_each_search_call_owns_the_output_written_until_the_next_search_call():
    calls = [
        ("search", '{"q": "one"}', 0),
        ("open", '{"open": [{"ref_id": "turn0search0"}]}', 1),  # reads the first's pages
        ("search", '{"q": "two"}', 2),
    ]
    entries = [
        "[ref_id=turn0search0†A†https://a.example/]",
        "[ref_id=turn0search1†A2†https://a2.example/]",
        "[ref_id=turn1search0†B†https://b.example/]",
    ]
    assert searches(calls, entries) == (
        WebSearch("one", (("A", "https://a.example/"), ("A2", "https://a2.example/"))),
        WebSearch("two", (("B", "https://b.example/"),)),
    )
    # output written before any call opened goes with the first search
    early = searches([("search", '{"q": "one"}', 1)], ["[ref_id=x†X†https://x.example/]"])
    assert early == (WebSearch("one", (("X", "https://x.example/"),)),)


def test_sources_without_a_query_are_still_one_search():
    found = searches([], ["[ref_id=r1†T†https://t.example/]"])
    assert found == (WebSearch("", (("T", "https://t.example/"),)),)


def test_no_calls_and_no_sources_is_no_search():
    assert searches([("search", "", 0)], []) == ()


def test_arguments_that_are_not_json_are_the_query_itself():
    assert searches([("search", "  bus times  ", 0)], [])[0].query == "bus times"


def test_the_same_url_listed_twice_is_one_source():
    tool_text = "[ref_id=a†One†https://u.example/]\n[ref_id=b†Two†https://u.example/]"
    [search] = searches([("search", '{"q": "x"}', 0)], [tool_text])
    assert [url for _, url in search.results] == ["https://u.example/"]
