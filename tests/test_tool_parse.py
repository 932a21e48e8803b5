"""The tool-call scanner: any split of the stream gives the same text and calls."""

import json

import pytest

from server.core.chat import ToolCall
from server.emulation.tool_parse import ToolCallScanner, parse_call

KNOWN = {"get_weather", "get_time"}
TEXT = (
    'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
)


def scan(text: str, cuts: list[int], limit: int = 1000) -> list:
    scanner, out, prev = ToolCallScanner(KNOWN, limit), [], 0
    for cut in [*cuts, len(text)]:
        out += scanner.feed(text[prev:cut])
        prev = cut
    out += scanner.close()
    merged: list = []
    for piece in out:  # adjacent text pieces are one text
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return [p if isinstance(p, str) else (p.name, json.loads(p.arguments)) for p in merged]


def test_every_split_gives_the_same_pieces():
    whole = scan(TEXT, [])
    assert whole == ["Sure. ", ("get_weather", {"city": "Paris"}), "\n", ("get_time", {})]
    for a in range(1, len(TEXT)):
        assert scan(TEXT, [a]) == whole, a
    assert scan(TEXT, list(range(1, len(TEXT)))) == whole


def test_held_back_text_is_only_a_possible_tag_start():
    scanner = ToolCallScanner(KNOWN, 1000)
    assert scanner.feed("a < b and <tool") == ["a < b and "]
    assert scanner.feed("box>") == ["<toolbox>"]


def test_unclosed_block_within_limit_is_read_at_the_end():
    body = '<tool_call>{"name": "get_time", "arguments": {"timezone": "UTC"}}'
    assert scan(body, [5]) == [("get_time", {"timezone": "UTC"})]


def test_block_longer_than_the_limit_is_text():
    assert scan(TEXT, list(range(1, len(TEXT))), limit=10)[0].startswith("Sure. <tool_call>")


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "```json\n{'name': 'get_weather', 'arguments': {'city': 'Paris'}}\n```",
        '{"name": "get_weather", "arguments": {"city": "Paris",},}',
        "get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>",
    ],
)
def test_shapes_and_repairs(body):
    call = parse_call(body, KNOWN)
    assert isinstance(call, ToolCall) and json.loads(call.arguments) == {"city": "Paris"}


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "rm_rf", "arguments": {}}',
        '{"name": "get_weather", "arguments": [1, 2]}',
        '{"name": "get_weather", "arguments": {"city": ',
        "just some words",
    ],
)
def test_never_invents_a_call(body):
    assert parse_call(body, KNOWN) is None
