"""The three faces' request converters called directly: a request body, decoded by the face's
own decoder, becomes the neutral ``Conversation`` the core runs (turns, tools and tool
choice, thinking and effort, stop sequences, structured output), and each request the
gateway cannot honour is a 400 that names the field."""

import json

import pytest

from server.core.chat import Conversation, ToolCall
from server.core.errors import GatewayError
from server.faces.anthropic.convert import to_conversation as anthropic_conversation
from server.faces.anthropic.wire import decode_messages_request
from server.faces.openai.convert import to_conversation as openai_conversation
from server.faces.openai.wire import decode_chat_request
from server.faces.responses.convert import Converted
from server.faces.responses.convert import to_conversation as responses_conversation
from server.faces.responses.tools import Offered, call_from_item, call_item, offer
from server.faces.responses.wire import decode_responses_request

CLAUDE = {"opus": "GLM-5.3", "sonnet": "GLM-4.7", "haiku": "GLM-4.5-Air"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _openai(body: dict, **kw) -> Conversation:
    return openai_conversation(decode_chat_request(json.dumps(body).encode()), "req-1", **kw)


def _anthropic(body: dict) -> Conversation:
    body = {"max_tokens": 1024, **body}
    return anthropic_conversation(decode_messages_request(json.dumps(body).encode()), "r", CLAUDE)


def _responses(body: dict) -> Converted:
    return responses_conversation(decode_responses_request(json.dumps(body).encode()), "r")


def _refused(call, *args) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)
    assert caught.value.status == 400
    return caught.value


USER = [{"role": "user", "content": "Weather in Paris?"}]

# OpenAI Chat Completions


def test_openai_messages_become_turns_with_developer_as_system():
    conv = _openai(
        {
            "model": "GLM-4.7",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}],
                },
            ],
        }
    )
    assert [(t.role, t.text) for t in conv.turns] == [
        ("system", "Be brief."),
        ("user", "hi\nthere"),
    ]
    assert conv.model.id == "GLM-4.7" and conv.request_id == "req-1"


def test_openai_sampling_limits_and_stop_are_carried():
    conv = _openai(
        {
            "model": "GLM-4.7",
            "messages": USER,
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 100,
            "max_completion_tokens": 50,
            "stop": "END",
            "user": "thread-7",
        }
    )
    assert (conv.temperature, conv.top_p, conv.max_tokens) == (0.2, 0.9, 50)
    assert conv.stop == ["END"] and conv.thread == "thread-7"


@pytest.mark.parametrize(
    ("effort", "thinking"), [("none", False), ("minimal", False), ("low", True), ("high", True)]
)
def test_openai_reasoning_effort_switches_thinking(effort: str, thinking: bool):
    conv = _openai({"model": "GLM-4.7", "messages": USER, "reasoning_effort": effort})
    assert conv.thinking is thinking and conv.effort == effort


def test_openai_tools_and_a_named_choice_become_a_forced_function():
    conv = _openai(
        {
            "model": "GLM-4.7",
            "messages": USER,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
        }
    )
    assert [t.name for t in conv.tools] == ["get_weather"]
    assert conv.tools[0].parameters["properties"]["city"] == {"type": "string"}
    assert conv.tool_choice == "function:get_weather" and conv.parallel_tool_calls is False


def test_openai_legacy_functions_are_tools_without_parallel_calls():
    conv = _openai(
        {
            "model": "GLM-4.7",
            "messages": USER,
            "functions": [WEATHER["function"]],
            "function_call": {"name": "get_weather"},
        }
    )
    assert conv.tool_choice == "function:get_weather"
    assert conv.parallel_tool_calls is False and conv.extra["legacy_functions"] is True


def test_openai_tool_history_is_kept_with_its_ids():
    conv = _openai(
        {
            "model": "GLM-4.7",
            "tools": [WEATHER],
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
        }
    )
    assistant, tool = conv.turns[1], conv.turns[2]
    assert [(c.id, c.name) for c in assistant.tool_calls] == [("call_1", "get_weather")]
    assert (tool.role, tool.tool_call_id, tool.text) == ("tool", "call_1", "sunny")


def test_openai_tools_are_dropped_when_tool_support_is_off():
    conv = _openai({"model": "GLM-4.7", "messages": USER, "tools": [WEATHER]}, tool_support=False)
    assert conv.tools == []


def test_openai_an_image_part_becomes_the_user_turns_image():
    url = "data:image/png;base64,iVBORw0KGgo="
    conv = _openai(
        {
            "model": "GLM-4.6V",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is it?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        }
    )
    [image] = conv.turns[0].images
    assert (image.source, image.param) == (url, "messages[0].content[1]")


def test_openai_response_format_json_schema_is_structured_output():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    conv = _openai(
        {
            "model": "GLM-4.7",
            "messages": USER,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "event", "schema": schema},
            },
        }
    )
    assert conv.output_format is not None
    assert (conv.output_format.name, conv.output_format.schema) == ("event", schema)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"messages": [*USER, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 5}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_openai_a_request_the_gateway_cannot_honour_names_its_field(body: dict, param: str):
    err = _refused(_openai, {"model": "GLM-4.7", "messages": USER, **body})
    assert err.param == param


def test_openai_an_unknown_model_is_a_404():
    with pytest.raises(GatewayError) as caught:
        _openai({"model": "gpt-4o", "messages": USER})
    assert caught.value.status == 404


# Anthropic Messages


def test_anthropic_system_blocks_and_system_messages_join_one_system_turn():
    conv = _anthropic(
        {
            "model": "claude-sonnet-4-5",
            "system": [
                {
                    "type": "text",
                    "text": "x-anthropic-billing-header: cc_version=1; cch=abc\n"
                    "You are Claude Code.",
                }
            ],
            "messages": [{"role": "system", "content": "Extra rule."}, *USER],
        }
    )
    assert conv.model.id == "GLM-4.7"  # the sonnet row chosen by CLAUDE_SONNET_MODEL
    assert conv.turns[0].role == "system"
    assert conv.turns[0].text == "You are Claude Code.\n\nExtra rule."
    assert "billing" not in conv.turns[0].text


def test_anthropic_tool_use_and_tool_result_blocks_become_calls_and_tool_turns():
    conv = _anthropic(
        {
            "model": "claude-opus-4-1",
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Looking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "P"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "is_error": True,
                            "content": [{"type": "text", "text": "timeout"}],
                        }
                    ],
                },
            ],
        }
    )
    assistant, result = conv.turns[1], conv.turns[2]
    assert assistant.text == "Looking." and "hmm" not in assistant.text
    assert json.loads(assistant.tool_calls[0].arguments) == {"city": "P"}
    assert (result.role, result.tool_call_id, result.text) == ("tool", "toolu_1", "[error] timeout")


@pytest.mark.parametrize(
    ("thinking", "on", "effort"),
    [
        ({"type": "disabled"}, False, None),
        ({"type": "enabled", "budget_tokens": 4000}, True, "high"),
        ({"type": "enabled", "budget_tokens": 32000}, True, "max"),
    ],
)
def test_anthropic_thinking_and_its_budget_become_thinking_and_effort(thinking, on, effort):
    conv = _anthropic({"model": "claude-opus-4-1", "messages": USER, "thinking": thinking})
    assert (conv.thinking, conv.effort) == (on, effort)


def test_anthropic_output_config_effort_wins_over_the_budget():
    conv = _anthropic(
        {
            "model": "claude-opus-4-1",
            "messages": USER,
            "thinking": {"type": "enabled", "budget_tokens": 32000},
            "output_config": {"effort": "low"},
        }
    )
    assert conv.effort == "low" and conv.upstream_effort == "high"


TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", True),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "none"}, "none", True),
    ],
)
def test_anthropic_tool_choice_maps_to_the_neutral_choice(choice, expected, parallel):
    conv = _anthropic(
        {
            "model": "claude-haiku-4-5",
            "messages": USER,
            "tools": [TOOL],
            "tool_choice": choice,
            "stop_sequences": ["\n\nHuman:"],
        }
    )
    assert (conv.tool_choice, conv.parallel_tool_calls) == (expected, parallel)
    assert conv.stop == ["\n\nHuman:"]


def test_anthropic_one_forced_tool_is_structured_output_answered_as_that_tool():
    conv = _anthropic(
        {
            "model": "claude-haiku-4-5",
            "messages": USER,
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": "get_weather"},
        }
    )
    assert conv.tools == []
    assert conv.output_format is not None and conv.output_format.tool == "get_weather"


def test_anthropic_web_search_alone_is_the_upstreams_search():
    conv = _anthropic(
        {
            "model": "claude-sonnet-4-5",
            "messages": USER,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        }
    )
    assert conv.search is True and conv.tools == []


def test_anthropic_a_tool_reference_loads_its_deferred_tool():
    deferred = {**TOOL, "name": "late_tool", "defer_loading": True}
    messages = [
        *USER,
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "tool_reference", "tool_name": "late_tool"}],
                }
            ],
        },
    ]
    conv = _anthropic(
        {"model": "claude-sonnet-4-5", "messages": messages, "tools": [TOOL, deferred]}
    )
    assert [t.name for t in conv.tools] == ["get_weather", "late_tool"]
    without = _anthropic(
        {"model": "claude-sonnet-4-5", "messages": USER, "tools": [TOOL, deferred]}
    )
    assert [t.name for t in without.tools] == ["get_weather"]


def test_anthropic_a_base64_image_becomes_a_data_url():
    conv = _anthropic(
        {
            "model": "claude-sonnet-4-5",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/jpeg",
                                "data": "/9j/4AAQ",
                            },
                        }
                    ],
                }
            ],
        }
    )
    assert conv.turns[0].images[0].source == "data:image/jpeg;base64,/9j/4AAQ"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "text", "data": "x"}}],
                    }
                ]
            },
            "messages.0.content.0",
        ),
        ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "tools.0.type"),
        ({"tools": [TOOL, {"type": "web_search_20250305", "name": "web_search"}]}, "tools.1.type"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source",
        ),
    ],
)
def test_anthropic_a_request_the_gateway_cannot_honour_names_its_field(body: dict, param: str):
    err = _refused(_anthropic, {"model": "claude-sonnet-4-5", "messages": USER, **body})
    assert err.param == param


# OpenAI Responses


def test_a_string_input_with_instructions_is_a_system_and_a_user_turn():
    out = _responses(
        {"model": "GLM-4.7", "input": "hi", "instructions": "Be brief.", "max_output_tokens": 99}
    )
    assert [(t.role, t.text) for t in out.conv.turns] == [("system", "Be brief."), ("user", "hi")]
    assert out.conv.max_tokens == 99
    assert out.items[0]["role"] == "user"


def test_responses_calls_follow_their_assistant_turn_and_outputs_take_the_calls_name():
    out = _responses(
        {
            "model": "GLM-4.7",
            "tools": [
                {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
            ],
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "reasoning", "summary": []},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
        }
    )
    turns = out.conv.turns
    assert [t.role for t in turns] == ["user", "assistant", "tool"]
    assert turns[1].text == "Looking." and [c.id for c in turns[1].tool_calls] == ["c1"]
    assert (turns[2].name, turns[2].text) == ("get_weather", "sunny")


def test_responses_a_namespace_tool_is_offered_under_a_dotted_name():
    out = _responses(
        {
            "model": "GLM-4.7",
            "input": "x",
            "tools": [
                {
                    "type": "namespace",
                    "name": "mcp",
                    "tools": [{"type": "function", "name": "read"}],
                },
                {"type": "custom", "name": "apply_patch"},
                {"type": "file_search"},
            ],
        }
    )
    assert [t.name for t in out.conv.tools] == ["mcp.read", "apply_patch"]
    assert out.offered["mcp.read"].namespace == "mcp"
    assert out.conv.tools[1].parameters["required"] == ["input"]
    assert out.skipped_tools == ["file_search"]


def test_responses_web_search_alone_is_the_upstreams_search_and_beside_tools_skipped():
    alone = _responses({"model": "GLM-4.7", "input": "x", "tools": [{"type": "web_search"}]})
    assert alone.conv.search is True and alone.skipped_tools == []
    beside = _responses(
        {
            "model": "GLM-4.7",
            "input": "x",
            "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
        }
    )
    assert beside.conv.search is False and beside.skipped_tools == ["web_search"]


def test_responses_history_comes_before_the_input():
    req = decode_responses_request(json.dumps({"model": "GLM-4.7", "input": "and now?"}).encode())
    history = decode_responses_request(
        json.dumps(
            {
                "model": "GLM-4.7",
                "input": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "answer"},
                ],
            }
        ).encode()
    ).input
    out = responses_conversation(req, "r", history=history)
    assert [t.text for t in out.conv.turns] == ["first", "answer", "and now?"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"input": [{"role": "assistant", "content": "only me"}]}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "function", "name": "g"},
            },
            "tool_choice",
        ),
    ],
)
def test_responses_a_request_the_gateway_cannot_honour_names_its_field(body: dict, param: str):
    err = _refused(_responses, {"model": "GLM-4.7", "input": "hi", **body})
    assert err.param == param


# Responses tool kinds (server/faces/responses/tools.py)


def test_a_custom_tools_grammar_is_told_to_the_model():
    spec, offered = offer(
        "custom",
        "apply_patch",
        "Patch files",
        None,
        {"type": "grammar", "syntax": "lark", "definition": "start: PATCH"},
    )
    about = spec.parameters["properties"]["input"]["description"]
    assert "lark grammar" in about and "start: PATCH" in about
    assert offered == Offered("custom", "apply_patch")


def test_a_custom_call_gives_back_its_free_text_input():
    offered = {"apply_patch": Offered("custom", "apply_patch")}
    call = ToolCall("c1", "apply_patch", json.dumps({"input": "*** Begin Patch"}))
    item = call_item("abc", call, offered)
    assert (item["type"], item["id"], item["input"]) == (
        "custom_tool_call",
        "ctc_abc",
        "*** Begin Patch",
    )


@pytest.mark.parametrize("arguments", ["not json", '{"patch": "x"}', "[1]"])
def test_a_custom_call_not_in_the_offered_shape_hands_over_what_came(arguments: str):
    call = ToolCall("c1", "apply_patch", arguments)
    item = call_item("abc", call, {"apply_patch": Offered("custom", "apply_patch")})
    assert item["input"] == arguments


def test_a_namespaced_call_is_given_back_under_the_clients_name_and_namespace():
    offered = {"mcp.read": Offered("function", "read", "mcp")}
    item = call_item("abc", ToolCall("c1", "mcp.read", "{}"), offered)
    assert (item["type"], item["name"], item["namespace"]) == ("function_call", "read", "mcp")


def test_an_earlier_custom_call_is_sent_back_as_the_offered_one_string_shape():
    call = call_from_item("custom_tool_call", "c1", "apply_patch", "*** Begin", None)
    assert json.loads(call.arguments) == {"input": "*** Begin"}
    assert call_from_item("function_call", "c2", "read", "", "mcp").name == "mcp.read"
