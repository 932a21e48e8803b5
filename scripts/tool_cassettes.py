"""Cassettes of upstream answers that use the gateway's tool-calling prompt protocol.

No capture of such an answer exists (the protocol is the gateway's own), so these are built
like capture 01 (2026 shape: plain ``phase: thinking`` deltas, then ``phase: answer`` deltas,
usage before the last delta, done), with the answer text written the way GLM answers when
given the protocol: one ``<tool_call>`` block per call. Each cassette exercises one case the
parser must handle. Run: ``.venv/bin/python scripts/tool_cassettes.py``.
"""

import json

from scripts.captures_to_cassettes import chunks, completion_request, js_frame, sse, write


def block(name: str, arguments: dict, raw: str | None = None) -> str:
    body = raw if raw is not None else json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>"


def stream(
    thinking: str,
    answer: str,
    usage: tuple[int, int],
    size: int = 3,
    answer_pieces: list[str] | None = None,
) -> list[str]:
    events = [js_frame(delta_content=d, phase="thinking") for d in chunks(thinking)]
    pieces = answer_pieces or [answer[i : i + size] for i in range(0, len(answer), size)]
    assert "".join(pieces) == answer
    events += [js_frame(delta_content=d, phase="answer") for d in pieces[:-1]]
    prompt, completion = usage
    events.append(
        js_frame(
            phase="other",
            usage={
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {},
            },
        )
    )
    events.append(js_frame(delta_content=pieces[-1], phase="answer"))
    events.append(js_frame(phase="done", done=True))
    return events


WEATHER = {"city": "Paris", "unit": "celsius"}
CASES = {
    "tools_single": (
        "The user wants the weather in Paris. I should call get_weather.",
        "I'll look up the current weather in Paris.\n\n" + block("get_weather", WEATHER),
        "one call after a sentence, in 3-character deltas",
    ),
    "tools_parallel": (
        "Two cities, independent lookups: call get_weather twice.",
        block("get_weather", {"city": "Paris"}) + "\n" + block("get_weather", {"city": "Tokyo"}),
        "two calls in one reply (parallel)",
    ),
    "tools_mixed_text": (
        "I can answer part of this directly, then check the time.",
        "Paris is the capital of France. Let me check the local time there.\n"
        + block("get_time", {"timezone": "Europe/Paris"})
        + "\n",
        "text before the call, a newline after it",
    ),
    "tools_native_glm": (
        "Call get_weather for Paris.",
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
        "GLM's native <arg_key>/<arg_value> form inside the block",
    ),
    "tools_repairable": (
        "Call get_weather.",
        "<tool_call>\n```json\n{'name': 'get_weather', 'arguments': {'city': 'Paris', "
        "'unit': 'celsius',},}\n```\n</tool_call>",
        "almost JSON: a code fence, single quotes, trailing commas",
    ),
    "tools_beyond_repair": (
        "Call get_weather.",
        'Checking now.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n'
        "</tool_call>",
        "a block whose JSON never closes: must come back as text, not as an invented call",
    ),
    "tools_unknown_function": (
        "Call a function.",
        block("launch_rockets", {"count": 3}),
        "a call to a function the client did not offer: must come back as text",
    ),
    "tools_step2": (
        "It is 18 degrees in Paris; convert to Fahrenheit with the tool.",
        block("convert_temperature", {"celsius": 18}),
        "second step of an agent loop: a call after a tool result",
    ),
    "tools_final_answer": (
        "18 C is 64.4 F. Answer the user.",
        "It is 18 °C (64.4 °F) in Paris right now.",
        "last step of an agent loop: a plain answer after two tool results",
    ),
}


def main() -> None:
    for name, (thinking, answer, what) in CASES.items():
        write(
            name,
            f"source: synthetic, 2026 shape modelled on captures/01 (plain thinking,\n"
            f"usage before the last answer delta, done); the answer uses the gateway's tool\n"
            f"protocol: {what}.",
            [(completion_request("glm-4.7", "weather?"), sse(stream(thinking, answer, (812, 64))))],
        )
    # every character its own frame, tags split everywhere
    thinking, answer, _ = CASES["tools_single"]
    write(
        "tools_split_frames",
        "source: synthetic like tools_single, but every character of\n"
        "the answer is its own frame, so the <tool_call> tags are split at every offset.",
        [
            (
                completion_request("glm-4.7", "weather?"),
                sse(stream(thinking, answer, (812, 64), size=1)),
            )
        ],
    )


if __name__ == "__main__":
    main()
