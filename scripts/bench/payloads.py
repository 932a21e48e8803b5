"""The requests the benchmark sends, built once as bytes.

Owns ``chat_request`` (what an OpenAI client sends the gateway), ``upstream_request`` (what
the gateway sends the upstream for that same chat, built by the gateway's own dialect code,
so going straight to the fake upstream sends the same bytes the gateway would) and the
``Check``s that say an answer is a whole, successful one.
"""

from __future__ import annotations

import json

from scripts.bench.client import Result
from scripts.bench.fake import load_answers

__all__ = [
    "API_KEY",
    "MODEL",
    "chat_request",
    "direct_request",
    "is_completion",
    "is_sse_done",
    "is_upstream_done",
    "upstream_request",
]

API_KEY = "sk-bench-0123456789abcdef"
MODEL = "GLM-4.7-Thinking"
PROMPT = "hi"


def chat_request(port: int, stream: bool) -> bytes:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def upstream_request(base_url: str) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body of the completion request the gateway builds for
    ``chat_request``, signed as a guest of the ``guest_auth`` cassette."""
    from server.faces.openai.convert import to_conversation
    from server.faces.openai.wire import decode_chat_request
    from server.zai.identity import credential_from_auth
    from server.zai.request import Dialect, build_completion

    body = chat_request(0, True).split(b"\r\n\r\n", 1)[1]
    conv = to_conversation(decode_chat_request(body), "bench")
    cred = credential_from_auth(load_answers("stream_glm5_plain_thinking").guest)
    dialect = Dialect(base_url=base_url, signature_key="bench", user_agent="bench")
    req = build_completion(dialect, cred, conv, "prod-fe-1.1.95")
    return req.url, req.headers, req.body


def direct_request(port: int) -> bytes:
    """``upstream_request`` as raw bytes for the load generator (kept alive)."""
    url, headers, body = upstream_request(f"http://127.0.0.1:{port}")
    target = url.split(f":{port}", 1)[1]
    lines = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def is_sse_done(result: Result) -> bool:
    """A gateway stream that ended with ``data: [DONE]``."""
    return b"data: [DONE]" in result.tail


def is_completion(result: Result) -> bool:
    """A gateway ``chat.completion`` object."""
    return result.head.startswith(b'{"id":"chatcmpl-') and result.tail.rstrip().endswith(b"}")


def is_upstream_done(result: Result) -> bool:
    """An upstream stream read to its ``done`` frame."""
    return b'"done":true' in result.tail
