"""The requests the benchmark sends, built once as bytes.

Owns ``chat_request`` (what an OpenAI client sends the gateway), ``direct_builder`` (what
the gateway sends the upstream for that same chat, built and signed anew for each request by
the gateway's own dialect code, so going straight to the fake upstream sends what the gateway
would and pays what it pays to build it) and the ``Check``s that say an answer is a whole,
successful one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from scripts.bench.client import Result
from scripts.bench.fake import load_answers

__all__ = [
    "API_KEY",
    "MODEL",
    "chat_request",
    "direct_builder",
    "direct_request",
    "is_completion",
    "is_message",
    "is_message_stop",
    "is_sse_done",
    "is_upstream_done",
    "messages_request",
    "upstream_request",
]

API_KEY = "sk-bench-0123456789abcdef"
MODEL = "GLM-4.7-Thinking"
PROMPT = "hi"


def chat_request(port: int, stream: bool, prompt: str = PROMPT) -> bytes:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _builder(base_url: str) -> Callable[[], tuple[str, dict[str, str], bytes]]:
    """What builds, for each call, the completion request (URL, headers, body) the gateway
    would send the upstream for ``chat_request``: the client's body decoded and converted,
    then built and signed (fresh request id and timestamp) as a guest of the ``guest_auth``
    cassette, with the home page's front-end version."""
    from server.faces.openai.convert import to_conversation
    from server.faces.openai.wire import decode_chat_request
    from server.zai.identity import credential_from_auth
    from server.zai.request import Dialect, build_completion
    from server.zai.signature import DEFAULT_KEY

    answers = load_answers("stream_glm5_plain_thinking")
    found = re.search(rb"prod-fe-[0-9.]+", answers.home)
    fe_version = found.group().decode().rstrip(".") if found else "prod-fe-1.0.0"
    client_body = chat_request(0, True).split(b"\r\n\r\n", 1)[1]
    cred = credential_from_auth(answers.guest)
    dialect = Dialect(base_url=base_url, signature_key=DEFAULT_KEY, user_agent="bench")

    def build() -> tuple[str, dict[str, str], bytes]:
        conv = to_conversation(decode_chat_request(client_body), "bench")
        req = build_completion(dialect, cred, conv, fe_version)
        return req.url, req.headers, req.body

    return build


def messages_request(port: int, stream: bool) -> bytes:
    """The same chat as ``chat_request``, as the Anthropic SDK sends it to ``/v1/messages``."""
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"x-api-key: {API_KEY}\r\nanthropic-version: 2023-06-01\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def upstream_request(base_url: str) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body of one completion request as the gateway builds it."""
    return _builder(base_url)()


def direct_builder(port: int) -> Callable[[], bytes]:
    """Raw bytes of a new ``upstream_request`` at each call (kept alive). Going straight to
    the fake with these pays what the gateway pays to build and sign a request, so the
    "direct" limit is a fair one."""
    base = f"http://127.0.0.1:{port}"
    build = _builder(base)

    def raw() -> bytes:
        url, headers, body = build()
        lines = [f"POST {url.removeprefix(base)} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    return raw


def direct_request(port: int) -> bytes:
    """One request of ``direct_builder``, for loads that replay fixed bytes (wrk, held
    streams): the fake does not check the timestamp's age, so it passes every time."""
    return direct_builder(port)()


def is_sse_done(result: Result) -> bool:
    """A gateway stream that ended with ``data: [DONE]``."""
    return b"data: [DONE]" in result.tail


def is_completion(result: Result) -> bool:
    """A gateway ``chat.completion`` object."""
    return result.head.startswith(b'{"id":"chatcmpl-') and result.tail.rstrip().endswith(b"}")


def is_message_stop(result: Result) -> bool:
    """An Anthropic stream that ended with ``message_stop``."""
    return b"event: message_stop" in result.tail


def is_message(result: Result) -> bool:
    """An Anthropic ``message`` object."""
    return result.head.startswith(b'{"id":"msg_') and result.tail.rstrip().endswith(b"}")


def is_upstream_done(result: Result) -> bool:
    """An upstream stream read to its ``done`` frame."""
    return b'"done":true' in result.tail
