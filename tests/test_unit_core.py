"""The core's small tables called directly: effort levels (``server.core.effort``), the
token estimate (``server.core.token_estimate``), the tool protocol written into the prompt
(``server.emulation.tool_prompt``), the model table (``server.core.models``) and the
one-gateway-per-name lock (``server.uniqueness``)."""

import asyncio
import itertools
import json
import os
import tempfile
from pathlib import Path

import pytest

from server.core import token_estimate
from server.core.chat import Conversation, ToolCall, ToolSpec, Turn
from server.core.effort import LEVELS, from_budget, thinking_for, upstream_effort
from server.core.errors import GatewayError
from server.core.models import (
    FAMILY,
    STATIC,
    LiveModel,
    capabilities,
    find_model,
    merge,
    require_model,
)
from server.core.token_estimate import estimate_answer, estimate_conversation, estimate_tokens
from server.emulation.tool_parse import parse_call
from server.emulation.tool_prompt import CALL_CLOSE, CALL_OPEN, render_call, render_for_upstream
from server.settings import load_settings
from server.uniqueness import InstanceLockError, claim_instance_lock

GLM47 = STATIC.rows["glm-4.7"]
GLM53 = STATIC.rows["glm-5.3"]

# effort


@pytest.mark.parametrize(("level", "sent"), [("low", "high"), ("medium", "high"), ("high", "high")])
def test_every_level_up_to_high_is_the_upstreams_lowest_level(level: str, sent: str):
    assert upstream_effort(level, model_takes_effort=True) == sent


@pytest.mark.parametrize("level", ["xhigh", "max"])
def test_the_top_levels_are_the_upstreams_max(level: str):
    assert upstream_effort(level, model_takes_effort=True) == "max"


def test_every_level_sent_is_one_the_upstream_knows():
    assert {v for v in LEVELS.values() if v is not None} <= {"high", "max"}


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_a_model_without_effort_is_never_sent_one(level: str):
    assert upstream_effort(level, model_takes_effort=False) is None


def test_no_level_means_no_effort_even_where_the_model_takes_one():
    assert upstream_effort(None, model_takes_effort=True) is None


@pytest.mark.parametrize(("level", "on"), [("none", False), ("minimal", False), ("low", True)])
def test_only_none_and_minimal_switch_thinking_off(level: str, on: bool):
    assert thinking_for(level) is on
    assert (upstream_effort(level, True) is not None) is on


def test_an_unknown_level_asks_for_some_thinking():
    assert thinking_for("turbo") is True


@pytest.mark.parametrize(
    ("budget", "level"), [(0, "high"), (4_000, "high"), (15_999, "high"), (16_000, "max")]
)
def test_a_claude_thinking_budget_picks_a_level(budget: int, level: str):
    # Claude Code: ~4k "think", ~10k "think hard", ~32k "ultrathink"
    assert from_budget(budget) == level


def test_ultrathink_is_max_and_more_budget_never_lowers_the_level():
    order = ["high", "max"]
    levels = [order.index(from_budget(b)) for b in range(0, 64_001, 1_000)]
    assert levels == sorted(levels)
    assert from_budget(32_000) == "max"


def test_an_effort_on_a_model_that_takes_it_turns_thinking_on():
    conv = Conversation(GLM53, [Turn("user", "hi")], effort="max")
    assert (conv.upstream_effort, conv.wants_thinking) == ("max", True)


def test_thinking_switched_off_drops_the_effort():
    conv = Conversation(GLM53, [Turn("user", "hi")], effort="max", thinking=False)
    assert (conv.upstream_effort, conv.wants_thinking) == (None, False)


# token estimate


def test_an_empty_text_is_no_tokens():
    assert estimate_tokens("") == 0


def test_each_cjk_character_is_about_one_token():
    assert estimate_tokens("你好世界") == 4


def test_a_short_word_is_one_token_and_a_long_one_one_per_six_letters():
    assert estimate_tokens("cat") == 1
    assert estimate_tokens("a" * 12) == 2
    assert estimate_tokens("a" * 13) == 3


def test_digits_are_one_token_per_three():
    assert estimate_tokens("1234567") == 3


def test_each_punctuation_mark_is_one_token_and_spaces_none():
    assert estimate_tokens("!?.,") == 4
    assert estimate_tokens("   \n\t ") == 0


def test_more_text_is_never_fewer_tokens():
    text = "The quick brown fox, 42 times: 你好!"
    counts = [estimate_tokens(text[:n]) for n in range(len(text) + 1)]
    assert counts == sorted(counts)


async def test_a_long_answer_is_counted_as_in_one_go_a_slice_per_loop_turn(monkeypatch):
    monkeypatch.setattr(token_estimate, "SLICE", 1000)
    words = ("the", "fox", "你好", "1234567", "!?", "snake_case", "a\nb", "x" * 200)
    text = " ".join(words[i * 7 % len(words)] for i in range(3000))
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.ensure_future(count_turns())
    await asyncio.sleep(0)
    assert await estimate_answer(text, "reasoning " * 500) == estimate_tokens(
        text
    ) + estimate_tokens("reasoning " * 500)
    counter.cancel()
    assert turns >= (len(text) + 5000) // 1000 - 1  # the loop ran between the slices


def _counting(monkeypatch) -> list[int]:
    """The characters each exact count was given (how much work an estimate did)."""
    counted: list[int] = []
    exact = token_estimate._count

    def count(text: str) -> int:
        counted.append(len(text))
        return exact(text)

    monkeypatch.setattr(token_estimate, "_count", count)
    return counted


def test_megabytes_sent_by_a_client_are_estimated_from_samples_within_a_few_percent(
    monkeypatch,
):
    # 7.5 MB counted whole held the event loop 1.75 s before every completion of an issued
    # key; the work is now capped whatever the client sends, and the count stays close.
    words = ("the", "fox", "你好", "1234567", "!?", "snake_case", "a\nb", "x" * 200)
    text = " ".join(words[i * 7 % len(words)] for i in range(1_000_000))
    exact = token_estimate._count(text)
    counted = _counting(monkeypatch)
    assert abs(estimate_tokens(text) - exact) <= exact * 0.03
    assert len(text) > 7_000_000 and sum(counted) <= token_estimate.EXACT_UP_TO
    counted.clear()
    turns = [Turn("user" if i % 2 else "assistant", text[i::100]) for i in range(100)]
    estimate_conversation(Conversation(GLM47, turns))  # many long turns: one cap for all
    assert sum(counted) <= token_estimate.EXACT_UP_TO


def test_a_text_up_to_the_cap_is_counted_exactly(monkeypatch):
    text = ("word " * 60_000)[: token_estimate.EXACT_UP_TO]
    counted = _counting(monkeypatch)
    assert estimate_tokens(text) == token_estimate._count(text) and counted[0] == len(text)


def test_english_prose_is_near_the_usual_four_characters_a_token():
    prose = (
        "Numerical integration over many intervals or finite differences on a grid parallelise "
        "almost perfectly, while step-by-step solvers are held back by synchronisation."
    )
    assert len(prose) / 6 <= estimate_tokens(prose) <= len(prose) / 3


def test_a_conversation_costs_its_texts_plus_a_few_tokens_a_message():
    conv = Conversation(GLM47, [Turn("system", "Be brief."), Turn("user", "hello there")])
    assert estimate_conversation(conv) == (
        estimate_tokens("Be brief.") + estimate_tokens("hello there") + 2 * 4
    )


def test_the_tool_protocol_the_gateway_adds_is_counted():
    turns = [Turn("user", "weather?")]
    bare = estimate_conversation(Conversation(GLM47, turns))
    tool = ToolSpec("get_weather", "Weather for a city", {"type": "object"})
    with_tools = estimate_conversation(Conversation(GLM47, turns, tools=[tool]))
    assert with_tools > bare + estimate_tokens("get_weather Weather for a city")


# tool prompt

WEATHER = ToolSpec("get_weather", "Weather for a city", {"type": "object"})


def _conv(turns: list[Turn], **kw) -> Conversation:
    return Conversation(GLM47, turns, tools=kw.pop("tools", [WEATHER]), **kw)


def test_a_rendered_call_reads_back_as_the_same_call():
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "days": [1, 2]}')
    text = render_call(call)
    assert text.startswith(CALL_OPEN) and text.endswith(CALL_CLOSE)
    parsed = parse_call(text[len(CALL_OPEN) : -len(CALL_CLOSE)], {"get_weather"})
    assert parsed is not None
    assert parsed.name == "get_weather"
    assert json.loads(parsed.arguments) == {"city": "Paris", "days": [1, 2]}


def test_a_call_with_no_arguments_is_written_with_an_empty_object():
    body = render_call(ToolCall("c", "ping", ""))[len(CALL_OPEN) : -len(CALL_CLOSE)]
    assert json.loads(body) == {"name": "ping", "arguments": {}}


def test_a_conversation_without_tools_or_tool_history_is_left_as_it_is():
    conv = Conversation(GLM47, [Turn("user", "hi")])
    assert render_for_upstream(conv) is conv


def test_the_tools_go_into_one_system_turn_after_the_callers_own():
    conv = _conv([Turn("system", "Be brief."), Turn("user", "Weather in Paris?")])
    turns = render_for_upstream(conv).turns
    assert [t.role for t in turns] == ["system", "user"]
    assert turns[0].text.startswith("Be brief.")
    assert '"name":"get_weather"' in turns[0].text
    assert "<tools>" in turns[0].text


@pytest.mark.parametrize(
    ("choice", "phrase"),
    [
        ("auto", "only when they help"),
        ("required", "must call at least one function"),
        ("function:get_weather", "must call the function `get_weather`"),
    ],
)
def test_the_tool_choice_becomes_a_rule_in_the_prompt(choice: str, phrase: str):
    system = render_for_upstream(_conv([Turn("user", "x")], tool_choice=choice)).turns[0].text
    assert phrase in system


def test_parallel_calls_off_says_one_call_per_reply():
    system = render_for_upstream(_conv([Turn("user", "x")], parallel_tool_calls=False)).turns[0]
    assert "at most one call per reply" in system.text


def test_tool_choice_none_sends_no_tools_but_keeps_the_history_as_text():
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    turns = [
        Turn("user", "Weather?"),
        Turn("assistant", "", tool_calls=[call]),
        Turn("tool", "sunny", tool_call_id="call_1"),
    ]
    out = render_for_upstream(_conv(turns, tool_choice="none")).turns
    assert all("<tools>" not in t.text for t in out)
    assert [t.role for t in out] == ["user", "assistant", "user"]
    assert CALL_OPEN in out[1].text


def test_a_tool_result_is_a_user_turn_naming_its_function_by_the_calls_id():
    call = ToolCall("call_7", "get_weather", '{"city": "Paris"}')
    turns = [
        Turn("user", "Weather?"),
        Turn("assistant", "Let me look.", tool_calls=[call]),
        Turn("tool", "sunny, 21C", tool_call_id="call_7"),
    ]
    out = render_for_upstream(_conv(turns)).turns
    assert out[2].role == "assistant"
    assert out[2].text.startswith("Let me look.") and CALL_OPEN in out[2].text
    assert out[3].role == "user"
    assert out[3].text == '<tool_result name="get_weather" id="call_7">\nsunny, 21C\n</tool_result>'


def test_consecutive_results_and_a_following_user_turn_merge_into_one_user_turn():
    calls = [ToolCall("a", "get_weather", "{}"), ToolCall("b", "get_weather", "{}")]
    turns = [
        Turn("user", "Both?"),
        Turn("assistant", "", tool_calls=calls),
        Turn("tool", "one", tool_call_id="a"),
        Turn("tool", "two", tool_call_id="b"),
        Turn("user", "thanks"),
    ]
    out = render_for_upstream(_conv(turns)).turns
    roles = [t.role for t in out]
    assert roles == ["system", "user", "assistant", "user"]
    assert all(a != b for a, b in itertools.pairwise(roles))
    assert out[3].text.index('id="a"') < out[3].text.index('id="b"') < out[3].text.index("thanks")


# model table


def test_every_upstream_model_has_its_plain_thinking_and_search_names():
    for name, upstream, *_ in FAMILY:
        for suffix, flag in (("", None), ("-Thinking", "thinking"), ("-Search", "search")):
            model = find_model(name + suffix)
            assert model is not None and model.upstream == upstream
            if flag:
                assert getattr(model, flag) is True


def test_names_are_matched_case_insensitively():
    assert find_model("glm-4.7-thinking") == find_model("GLM-4.7-Thinking")


def test_the_glm5_family_needs_a_user_token_and_older_models_do_not():
    assert not find_model("GLM-5").guest and not find_model("GLM-5.3").guest
    assert find_model("GLM-4.7").guest and find_model("GLM-5.3-Flash").guest


def test_only_glm_5_2_and_5_3_take_an_effort():
    takes = {name for name, *_, effort in FAMILY if effort}
    assert takes == {"GLM-5.2", "GLM-5.3"}
    assert capabilities(GLM53)["reasoning_effort"] == ["high", "max"]
    assert capabilities(GLM47)["reasoning_effort"] == []


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("claude-opus-4-1", "opus"),
        ("claude-3-5-haiku-latest", "haiku"),
        ("claude-sonnet-4-5", "sonnet"),
        ("claude-next", "sonnet"),
    ],
)
def test_a_claude_name_maps_to_its_familys_row(name: str, family: str):
    claude = {"opus": "GLM-5.3", "sonnet": "GLM-4.7", "haiku": "GLM-4.5-Air"}
    assert find_model(name, claude) == find_model(claude[family])


def test_a_claude_name_is_unknown_without_the_mapping():
    assert find_model("claude-sonnet-4-5") is None


def test_an_unknown_model_is_a_404_listing_what_exists():
    with pytest.raises(GatewayError) as caught:
        require_model("gpt-4o")
    assert caught.value.status == 404 and caught.value.param == "model"
    assert "GLM-4.7-Thinking" in caught.value.detail


def test_an_unknown_model_name_is_shown_safely():
    with pytest.raises(GatewayError) as caught:
        require_model("x\r\nINFO forged")
    assert "\r\n" not in caught.value.detail


def _live(upstream: str, **kw) -> LiveModel:
    return LiveModel(upstream, **kw)


def test_a_row_the_upstream_hides_or_deactivates_is_gone():
    table = merge([_live("glm-4.7", hidden=True), _live("glm-4.6v", active=False)], frozenset())
    assert table.find("GLM-4.7") is None and table.find("GLM-4.6V-Thinking") is None
    assert table.find("GLM-4.5") is not None  # not listed upstream: kept


def test_a_new_live_model_is_added_by_name_with_its_upstream_id_as_an_alias():
    table = merge([_live("x-new-9", name="GLM-9", tiers=frozenset({"user"}))], frozenset({"user"}))
    model = table.find("glm-9")
    assert model is not None and model.upstream == "x-new-9" and not model.guest
    assert table.find("x-new-9") == model
    assert "GLM-9" in [m.id for m in table.listed]


def test_a_live_model_with_an_unusable_name_is_listed_by_its_id():
    table = merge([_live("x-new-9", name="GLM 9 (preview)")], frozenset())
    assert table.find("x-new-9") is not None


def test_live_capabilities_decide_the_variants_and_effort():
    caps = {"think": False, "web_search": False, "reasoning_effort": True, "vision": True}
    table = merge([_live("glm-4.7", capabilities=caps)], frozenset())
    assert table.find("GLM-4.7-Thinking") is None and table.find("GLM-4.7-Search") is None
    model = table.find("GLM-4.7")
    assert model is not None and model.effort and model.vision


def test_the_guest_tier_is_decided_only_when_the_guest_list_was_read():
    row = _live("glm-4.7", tiers=frozenset({"user"}))
    assert not merge([row], frozenset({"guest", "user"})).find("GLM-4.7").guest
    assert merge([row], frozenset({"user"})).find("GLM-4.7").guest  # static value kept


# one gateway per service name


def _settings(**kw: str):
    return load_settings(auth_token="sk-unit-lock-test", **kw)


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_second_gateway_with_the_same_name_stops_naming_the_first(lock_dir: Path):
    settings = _settings(single_instance="on", service_name="unit-lock")
    first = claim_instance_lock(settings)
    assert first is not None
    try:
        assert (lock_dir / "unit-lock.lock").read_text() == str(os.getpid())
        with pytest.raises(InstanceLockError) as caught:
            claim_instance_lock(settings)
        assert str(os.getpid()) in str(caught.value) and "SINGLE_INSTANCE=off" in str(caught.value)
        other = claim_instance_lock(_settings(single_instance="on", service_name="other"))
        assert other is not None
        other.close()
    finally:
        first.close()


def test_a_lock_left_by_a_dead_gateway_is_taken_over(lock_dir: Path):
    (lock_dir / "unit-lock.lock").write_text("999999999")
    handle = claim_instance_lock(_settings(single_instance="on", service_name="unit-lock"))
    assert handle is not None
    handle.close()
    assert (lock_dir / "unit-lock.lock").read_text() == str(os.getpid())


def test_the_lock_is_free_again_once_its_holder_closes_it(lock_dir: Path):
    settings = _settings(single_instance="on", service_name="unit-lock")
    claim_instance_lock(settings).close()
    again = claim_instance_lock(settings)
    assert again is not None
    again.close()


def test_single_instance_off_takes_no_lock(lock_dir: Path):
    assert claim_instance_lock(_settings(single_instance="off", service_name="x")) is None
    assert not (lock_dir / "x.lock").exists()


def test_auto_takes_no_lock_inside_kubernetes(lock_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert claim_instance_lock(_settings(single_instance="auto", service_name="x")) is None
