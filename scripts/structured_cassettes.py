"""Cassettes of upstream answers to a structured-output request (tests/test_structured.py).

The model is asked (in the system prompt the gateway writes) for one JSON value following the
client's schema; these are the answers GLM gives in practice: the JSON in a code fence with a
sentence around it (extracted), almost-JSON (repaired), an answer missing a required field
followed, after the gateway names the problem, by a valid one (one retry), and two invalid
answers in a row (the error). Built like capture 01 (2026 shape: plain thinking, answer
deltas, usage before the last delta, done) with the helpers of ``scripts/tool_cassettes.py``.
Run from the repo root: ``.venv/bin/python -m scripts.structured_cassettes``.
"""

from scripts.captures_to_cassettes import completion_request, sse, write
from scripts.tool_cassettes import stream

HEADER = (
    "source: synthetic, 2026 shape modelled on captures/01 (plain thinking, usage before\n"
    "the last answer delta, done), answering a structured-output prompt of the gateway.\n"
)
THINKING = "The user wants the event as JSON with name, date and participants."
VALID = '{"name": "Science fair", "date": "Friday", "participants": ["Alice", "Bob"]}'
FENCED = f"Here is the event:\n\n```json\n{VALID}\n```\n\nLet me know if you need more."
REPAIRABLE = "{'name': 'Science fair', 'date': 'Friday', 'participants': ['Alice', 'Bob'],}"
MISSING = '{"name": "Science fair", "participants": ["Alice", "Bob"]}'  # no "date"
PROMPT = "Alice and Bob are going to a science fair on Friday."


def _one(answer: str, usage: tuple[int, int]) -> tuple:
    return (completion_request("glm-4.7", PROMPT), sse(stream(THINKING, answer, usage, size=7)))


def main() -> None:
    write(
        "structured_fenced",
        HEADER + "The JSON in a code fence, with prose around it.",
        [_one(FENCED, (420, 40))],
    )
    write(
        "structured_repairable",
        HEADER + "Almost-JSON: single quotes, a trailing comma.",
        [_one(REPAIRABLE, (420, 30))],
    )
    write(
        "structured_retry",
        HEADER + "Two interactions: 1. the answer lacks the required 'date'; 2. after the"
        " gateway named\nthe problem, a valid answer.",
        [_one(MISSING, (420, 25)), _one(VALID, (470, 30))],
    )
    write(
        "structured_invalid_twice",
        HEADER + "Two interactions, both lacking the required 'date'.",
        [_one(MISSING, (420, 25)), _one(MISSING, (470, 25))],
    )


if __name__ == "__main__":
    main()
