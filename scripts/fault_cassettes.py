"""Cassettes for upstream faults that no capture shows but a gateway must survive.

``stream_malformed_frames`` is capture 01 with junk between its frames: a frame that is not
JSON, JSON that is not a frame, a frame with a field of the wrong type, an SSE comment and an
event of another kind. The answer must come through whole; the junk is skipped (and logged).
Run: ``.venv/bin/python -m scripts.fault_cassettes``.
"""

from scripts.captures_to_cassettes import (
    capture,
    completion_request,
    data_lines,
    response,
    write,
)

JUNK = [
    "data: {not json at all",
    "data: [1, 2, 3]",
    ": keep-alive comment",
    'event: ping\ndata: {"type": "ping"}',
    'data: {"type": "chat:completion", "data": {"phase": "answer", "delta_content": 5}}',
]


def main() -> None:
    events = [f"data: {frame}" for frame in data_lines(capture("01"))]
    for offset, junk in enumerate(JUNK):
        events.insert(5 + offset * 9, junk)
    body = "".join(f"{event}\n\n" for event in events)
    write(
        "stream_malformed_frames",
        "source: captures/01 verbatim, with five junk events inserted (not JSON, JSON that\n"
        "is not a frame, a wrong field type, an SSE comment, a ping event).",
        [
            (
                completion_request("glm-5", "hi"),
                response(200, "OK", "text/event-stream; charset=utf-8", body),
            )
        ],
        check_frames=False,
    )  # the junk is the point


if __name__ == "__main__":
    main()
