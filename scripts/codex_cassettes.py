"""Cassettes of the upstream answers behind one Codex CLI session (tests/test_codex.py).

``codex exec`` sends one ``POST /v1/responses`` per model turn (see ``tests/codex/README.md``),
so a prompt costs one upstream completion and a one-command turn costs two: the first answered
with a sentence and a ``<tool_call>`` block calling Codex's ``exec_command`` tool (``cmd``
required, the rest optional), the second, after Codex ran the command and sent its output
back as a ``function_call_output``, with a plain answer. Built like capture 01 (2026 shape:
plain ``phase: thinking`` deltas, then ``phase: answer`` deltas, usage before the last answer
delta, done) with the helpers of ``scripts/tool_cassettes.py``. Run from the repo root:
``.venv/bin/python -m scripts.codex_cassettes``.
"""

from scripts.captures_to_cassettes import completion_request, sse, write
from scripts.tool_cassettes import block, stream

PLAIN_THINKING = "The user wants a short greeting. Reply in one line."
PLAIN_ANSWER = "Hello from GLM! What shall we build today?"
COMMAND = "echo hello $((6*7)) | tee greeting.txt"
FINAL_ANSWER = "The command printed `hello 42` and saved it to greeting.txt."
HEADER = (
    "source: synthetic, 2026 shape modelled on captures/01 (plain thinking, usage\n"
    "before the last answer delta, done), answering what Codex CLI 0.171.0 sends with\n"
    "codex exec (tests/codex/*.request.json).\n"
)


def main() -> None:
    write(
        "codex_plain",
        HEADER + "One interaction: a plain one-line greeting (no tools).",
        [
            (
                completion_request("glm-4.7", "Reply with a one-line greeting."),
                sse(stream(PLAIN_THINKING, PLAIN_ANSWER, (11020, 14), size=5)),
            )
        ],
    )
    write(
        "codex_tool",
        HEADER + "Two interactions: 1. a sentence, then the gateway's tool protocol calling"
        " exec_command\n(echo hello $((6*7)) | tee greeting.txt); 2. after the"
        " function_call_output, the final answer.",
        [
            (
                completion_request("glm-4.7", "Run the echo command."),
                sse(
                    stream(
                        "The user wants me to run the echo command and report the output."
                        " I'll call exec_command.",
                        "I'll run it.\n" + block("exec_command", {"cmd": COMMAND}),
                        (11140, 38),
                    )
                ),
            ),
            (
                completion_request("glm-4.7", "hello 42"),
                sse(
                    stream(
                        "The command ran and printed hello 42. Report that to the user.",
                        FINAL_ANSWER,
                        (11230, 15),
                    )
                ),
            ),
        ],
    )


if __name__ == "__main__":
    main()
