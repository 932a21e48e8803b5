"""Cassettes of the upstream answers behind one Claude Code session (tests/test_claude_code.py).

Claude Code in print mode sends one ``/v1/messages`` request per model turn (see
``tests/claude_code/README.md``), so a prompt costs one upstream completion and a one-tool turn
costs two: the first answered with a ``<tool_call>`` block calling ``Bash`` with the input
Claude Code declares (``command`` required, ``description`` optional but always given by
Claude), the second, after Claude Code ran the command and sent its output back as a
``tool_result``, with a plain answer. Built like capture 01 (2026 shape: plain ``phase:
thinking`` deltas, then ``phase: answer`` deltas, usage before the last answer delta, done) with
the helpers of ``scripts/tool_cassettes.py``. Run from the repo root: ``.venv/bin/python -m
scripts.claude_code_cassettes``.
"""

from vcr.cassette import Cassette
from vcr.matchers import method, path
from vcr.record_mode import RecordMode

from scripts.captures_to_cassettes import OUT, completion_request, sse, write
from scripts.tool_cassettes import block, stream

PLAIN_ANSWER = "Hello! How can I help you today?"
BASH_INPUT = {
    "command": "echo hello $((6*7)) | tee greeting.txt",
    "description": "Print a greeting and save it to greeting.txt",
}
FINAL_ANSWER = "The command printed `hello 42` and saved it to greeting.txt."
SEARCH_QUERY = "Elon Musk news this week"
SEARCH_ANSWER = (
    "This week's roundup covers Tesla and SpaceX, and Starship has a test flight update."
)
HEADER = (
    "source: synthetic, 2026 shape modelled on captures/01 (plain thinking, usage\n"
    "before the last answer delta, done), answering what Claude Code 2.1.331 sends in\n"
    "print mode (tests/claude_code/*.request.json).\n"
)


def _search_frames() -> list[str]:
    """The frames of cassette stream_v2_toolcall_search_2026 (capture 07's search turn)."""
    cassette = Cassette.load(
        path=str(OUT / "stream_v2_toolcall_search_2026.yaml"),
        match_on=[method, path],
        record_mode=RecordMode.NONE,
    )
    body = cassette.responses[0]["body"]["string"]
    text = body.decode() if isinstance(body, bytes) else body
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]


def main() -> None:
    write(
        "claude_code_plain",
        HEADER + "One interaction: a plain one-line greeting (no tools).",
        [
            (
                completion_request("glm-4.7", "Reply with a one-line greeting."),
                sse(
                    stream(
                        "The user wants a short greeting. Reply in one line.",
                        PLAIN_ANSWER,
                        (9120, 18),
                        size=5,
                    )
                ),
            )
        ],
    )
    write(
        "claude_code_tool",
        HEADER + "Two interactions: 1. a sentence, then the gateway's tool"
        " protocol calling Bash\n(echo hello $((6*7)) | tee greeting.txt); 2. after the"
        " tool_result, the final answer.",
        [
            (
                completion_request("glm-4.7", "Run the echo command with the Bash tool."),
                sse(
                    stream(
                        "The user wants me to run the echo command with the Bash tool and"
                        " report the output. I'll call Bash.",
                        "I'll run it.\n" + block("Bash", BASH_INPUT),
                        (9240, 41),
                    )
                ),
            ),
            (
                completion_request("glm-4.7", "hello 42"),
                sse(
                    stream(
                        "The command ran and printed hello 42. Report that to the user.",
                        FINAL_ANSWER,
                        (9310, 12),
                    )
                ),
            ),
        ],
    )
    write(
        "claude_code_websearch",
        HEADER + "Four interactions, a WebSearch turn: 1. ToolSearch loading the deferred\n"
        "WebSearch; 2. a WebSearch call; 3. Claude Code's WebSearch request (the web_search\n"
        "server tool alone) answered by the upstream's own search (capture 07's 2026\n"
        "tool_call/tool_response frames, as stream_v2_toolcall_search_2026); 4. after the\n"
        "search results came back as a tool_result, the final answer.",
        [
            (
                completion_request("glm-4.7", "Search the web."),
                sse(
                    stream(
                        "The user wants this week's news. WebSearch is deferred: load it.",
                        block("ToolSearch", {"query": "select:WebSearch", "max_results": 1}),
                        (9240, 30),
                    )
                ),
            ),
            (
                completion_request("glm-4.7", "Tool WebSearch is now loaded."),
                sse(
                    stream(
                        "WebSearch is loaded. Search for the news.",
                        block("WebSearch", {"query": SEARCH_QUERY}),
                        (9400, 25),
                    )
                ),
            ),
            (completion_request("glm-4.7", f"Web search: {SEARCH_QUERY}"), sse(_search_frames())),
            (
                completion_request("glm-4.7", "Web search results"),
                sse(
                    stream(
                        "The search found a roundup and a Starship update. Summarise.",
                        SEARCH_ANSWER,
                        (9900, 24),
                    )
                ),
            ),
        ],
    )


if __name__ == "__main__":
    main()
