"""A stand-in Anthropic API that records what a client sends (used to learn Claude Code's wire).

Every request is appended as one JSON line (method, path, query, headers with secrets masked,
body) to the log file. ``POST /v1/messages`` answers a minimal valid Messages response, streamed
(message_start, ping, content_block_start/delta/stop, message_delta, message_stop) when the body
asks for ``stream``: a ``tool_use`` of the offered tool ``Bash`` running the first backquoted
command of the last user turn when that turn carries no ``tool_result`` yet, else one text
block. ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": n}``; anything else is a
404 in the Anthropic error shape. ``CONNECT`` (when used as ``HTTPS_PROXY``) is logged and
refused, so the log also names every host a client tries to reach through the proxy.
Run: ``python tests/claude_code/recorder.py --port 8765 --log /tmp/wire.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SECRET_HEADERS = {"x-api-key", "authorization", "proxy-authorization", "cookie"}


def _mask(name: str, value: str) -> str:
    return f"<{len(value)} chars>" if name.lower() in SECRET_HEADERS else value


def _last_user_text(body: dict) -> tuple[str, bool]:
    """The text of the last user message and whether it carries a tool_result."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content, False
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        has_result = any(b.get("type") == "tool_result" for b in content)
        return "\n".join(texts), has_result
    return "", False


def answer(body: dict) -> tuple[list[dict], str]:
    """(content blocks, stop_reason) for a Messages request."""
    text, has_result = _last_user_text(body)
    tools = {t.get("name") for t in body.get("tools") or []}
    command = re.search(r"`([^`]+)`", text)
    if "Bash" in tools and command and not has_result:
        return [
            {
                "type": "tool_use",
                "id": "toolu_01RecorderBash0000000000",
                "name": "Bash",
                "input": {"command": command.group(1), "description": "Print a greeting"},
            }
        ], "tool_use"
    if has_result:
        return [{"type": "text", "text": "The command ran."}], "end_turn"
    return [{"type": "text", "text": "Hello from the recorder."}], "end_turn"


def events(body: dict, blocks: list[dict], stop: str) -> list[tuple[str, dict]]:
    model = body.get("model", "unknown")
    usage = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    out = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01Recorder",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": block["text"][i : i + 8]}
                for i in range(0, len(block["text"]), 8)
            ]
        else:
            start = {**block, "input": {}}
            raw = json.dumps(block["input"])
            deltas = [
                {"type": "input_json_delta", "partial_json": raw[i : i + 10]}
                for i in range(0, len(raw), 10)
            ]
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        out += [
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        ]
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 12},
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return out


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_path = "wire.jsonl"
    lock = threading.Lock()

    def log_message(self, *_: object) -> None:
        pass

    def _record(self, body: bytes) -> dict | None:
        parsed = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(body) if body else None
        url = urlsplit(self.path)
        entry = {
            "method": self.command,
            "path": url.path or self.path,
            "query": url.query,
            "headers": {k: _mask(k, v) for k, v in self.headers.items()},
            "body": parsed if parsed is not None else body.decode("latin-1"),
        }
        with self.lock, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        return parsed if isinstance(parsed, dict) else None

    def _send_json(self, code: int, obj: dict) -> None:
        raw = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("request-id", "req_recorder")
        self.end_headers()
        self.wfile.write(raw)

    def do_CONNECT(self) -> None:
        self._record(b"")
        self._send_json(403, {"error": "the recorder does not tunnel"})

    def do_GET(self) -> None:
        self._record(b"")
        self._not_found()

    def _not_found(self) -> None:
        self._send_json(
            404,
            {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"recorder: no {self.path}"},
            },
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self._record(self.rfile.read(length)) or {}
        path = urlsplit(self.path).path
        if path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": len(json.dumps(body)) // 4})
            return
        if path != "/v1/messages":
            self._not_found()
            return
        blocks, stop = answer(body)
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    "id": "msg_01Recorder",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "unknown"),
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 12},
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("request-id", "req_recorder")
        self.end_headers()
        for name, data in events(body, blocks, stop):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log", default="wire.jsonl")
    args = parser.parse_args()
    Recorder.log_path = args.log
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Recorder)
    print(f"recording on http://127.0.0.1:{args.port} -> {args.log}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
