"""A fast fake chat.z.ai for the benchmark: raw asyncio, no per-request matching.

Owns ``serve`` (and ``python -m scripts.bench.fake``). It answers what the gateway asks on its
hot path from the same cassettes the tests replay: ``GET /`` (home page: the front-end
version), ``GET /api/v1/auths/`` and ``POST /api/v1/auths/guest`` (a guest; a user account when the
request carries a token, as the pool's token checks do), ``POST
/api/v2/chat/completions`` (the recorded SSE stream, chunked). Each listener has a pace:
0 writes the whole answer in one piece (so the fake is never the bottleneck), > 0 writes one
event at a time with that many seconds between events, as the real upstream streams.
A completion whose request body holds ``LONG_MARKER`` gets, with ``--long N``, a generated
answer of N characters in deltas of one to three words (written in one piece): the long-answer
phase. Keep-alive is honoured unless the request says ``Connection: close``. ``GET /__stats``
answers this listener's counters as JSON (``?reset`` zeroes ``max_open`` after reading),
with the arrival times of the last completion requests (to split a time to first byte into
before and after the upstream request). Completion requests pass the real upstream's checks
(``scripts/upstream_checks.py``, the same the test suite's fake makes: token, front-end
version, signature) or get its refusal, so the "direct" limit is a fair one; ``--no-verify``
skips them. Beyond that nothing is matched: this fake only has to be cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import yaml

from scripts.upstream_checks import refusal

__all__ = ["LONG_MARKER", "Answers", "Stats", "load_answers", "long_events", "serve"]

ROOT = Path(__file__).resolve().parents[2]
CASSETTES = ROOT / "cassettes"
COMPLETIONS = b"/api/v2/chat/completions"
AUTHS = (b"/api/v1/auths/", b"/api/v1/auths/guest")
LONG_MARKER = b"LONG-ANSWER"
_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "in", "rain")
_ARRIVALS = 64  # completion arrival times kept (same clock as the benchmark's: CLOCK_MONOTONIC)


@dataclass(slots=True)
class Stats:
    """One listener's counters; ``open``/``max_open`` count streams being written."""

    connections: int = 0
    requests: int = 0
    completions: int = 0
    auths: int = 0
    home: int = 0
    completed: int = 0
    aborted: int = 0
    refused: int = 0  # completion requests that failed the upstream's checks
    open: int = 0
    max_open: int = 0
    arrivals: list[float] = field(default_factory=list)  # last completions' time.monotonic()


@dataclass(frozen=True, slots=True)
class Answers:
    home: bytes
    guest: bytes
    user: bytes  # what a token check of a user account answers (pooled mode)
    events: tuple[bytes, ...]  # the SSE body cut at blank lines, each piece ends with "\n\n"


def _interaction(name: str, method: str, path: str) -> dict:
    data = yaml.safe_load((CASSETTES / f"{name}.yaml").read_text())
    for item in data["interactions"]:
        request = item["request"]
        target = request["uri"].split("://", 1)[-1].partition("/")[2].split("?")[0]
        if request["method"] == method and "/" + target == path:
            return item["response"]
    raise LookupError(f"cassette {name} has no {method} {path}")


def _body(response: dict) -> bytes:
    body = response["body"]["string"] or b""
    return body.encode() if isinstance(body, str) else body


def _split_events(body: bytes) -> tuple[bytes, ...]:
    pieces, start = [], 0
    while start < len(body):
        end = body.find(b"\n\n", start)
        end = len(body) if end < 0 else end + 2
        pieces.append(body[start:end])
        start = end
    return tuple(pieces)


def load_answers(stream: str) -> Answers:
    """The bodies the fake serves, read once from ``cassettes/``."""
    home = _body(_interaction("home", "GET", "/"))
    guest = _body(_interaction("guest_auth", "GET", "/api/v1/auths/"))
    user = _body(_interaction("guest_auth_user_role", "GET", "/api/v1/auths/"))
    events = _split_events(_body(_interaction(stream, "POST", COMPLETIONS.decode())))
    return Answers(home, guest, user, events)


def long_events(chars: int) -> bytes:
    """An SSE body streaming ``chars`` characters of answer, one to three words a frame."""
    frames, size, i = [], 0, 0
    while size < chars:
        i += 1
        delta = " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(1 + i % 3)) + " "
        size += len(delta)
        data = {"delta_content": delta, "phase": "answer"}
        frame = json.dumps({"type": "chat:completion", "data": data}, separators=(",", ":"))
        frames.append(b"data: " + frame.encode() + b"\n\n")
    frames.append(b'data: {"type":"chat:completion","data":{"phase":"done","done":true}}\n\n')
    return b"".join(frames)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _head(status: str, content_type: bytes, close: bool, length: int | None) -> bytes:
    lines = [b"HTTP/1.1 " + status.encode(), b"Content-Type: " + content_type]
    if length is None:
        lines += [b"Cache-Control: no-cache", b"Transfer-Encoding: chunked"]
    else:
        lines.append(b"Content-Length: %d" % length)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Listener:
    """One port: its pace, its counters, and its pre-built answers."""

    def __init__(self, answers: Answers, pace: float, verify: bool, long: bytes = b"") -> None:
        self.pace = pace
        self.verify = verify
        found = re.search(rb"prod-fe-[0-9.]+", answers.home)
        self.fe_version = found.group().decode().rstrip(".") if found else None
        self.stats = Stats()
        self.events = answers.events
        sse = b"text/event-stream; charset=utf-8"
        self.sse_head = {close: _head("200 OK", sse, close, None) for close in (False, True)}
        body = b"".join(answers.events)
        self.fast = {
            close: self.sse_head[close] + _chunk(body) + b"0\r\n\r\n" for close in (False, True)
        }
        self.long = {
            close: self.sse_head[close] + _chunk(long) + b"0\r\n\r\n" for close in (False, True)
        }
        self.user = answers.user
        self.user_token = json.loads(answers.user)["token"].encode()
        self.json = {}
        for name, payload, kind in (
            ("home", answers.home, b"text/html; charset=utf-8"),
            ("guest", answers.guest, b"application/json"),
            ("user", answers.user, b"application/json"),
            ("missing", b'{"detail":"Not Found"}', b"application/json"),
        ):
            status = "404 Not Found" if name == "missing" else "200 OK"
            self.json[name] = {
                close: _head(status, kind, close, len(payload)) + payload for close in (False, True)
            }


class _Conn(asyncio.Protocol):
    def __init__(self, listener: _Listener) -> None:
        self.listener = listener
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()

    def _next(self) -> None:
        while self.task is None and not self.lost:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", 0))
            close = headers.get(b"connection", b"").lower() == b"close"
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            method, target = lines[0].split(b" ", 2)[:2]
            self._answer(method, target, headers, body, close)

    def _answer(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes, close: bool
    ) -> None:
        listener, stats = self.listener, self.listener.stats
        path, _, query = target.partition(b"?")
        stats.requests += 1
        assert self.transport is not None
        if method == b"POST" and path == COMPLETIONS:
            stats.completions += 1
            refused = listener.verify and _refusal(query, headers, body, listener.fe_version)
            if refused:
                stats.refused += 1
                status, detail = refused
                payload = json.dumps(detail).encode()
                head = _head(f"{status} Refused", b"application/json", close, len(payload))
                self.transport.write(head + payload)
                if close:
                    self.transport.close()
                return
            stats.arrivals.append(time.monotonic())
            del stats.arrivals[:-_ARRIVALS]
            if LONG_MARKER in body:
                self.transport.write(listener.long[close])
            elif listener.pace > 0:
                self.task = asyncio.ensure_future(self._paced(close))
                return
            else:
                self.transport.write(listener.fast[close])
            stats.completed += 1
        elif path in AUTHS:
            # A token check carries the token (a pooled user account); a sign-in carries none.
            stats.auths += 1
            bearer = headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if bearer:  # the account answers with the token it was shown (not rotated)
                payload = listener.user.replace(listener.user_token, bearer)
                head = _head("200 OK", b"application/json", close, len(payload))
                self.transport.write(head + payload)
            else:
                self.transport.write(listener.json["guest"][close])
        elif path == b"/":
            stats.home += 1
            self.transport.write(listener.json["home"][close])
        elif path == b"/__stats":
            body = json.dumps(asdict(stats)).encode()
            if query.startswith(b"reset"):
                stats.max_open = stats.open
            self.transport.write(_head("200 OK", b"application/json", close, len(body)) + body)
        else:
            self.transport.write(listener.json["missing"][close])
        if close:
            self.transport.close()

    async def _paced(self, close: bool) -> None:
        listener, stats = self.listener, self.listener.stats
        transport = self.transport
        assert transport is not None
        stats.open += 1
        stats.max_open = max(stats.max_open, stats.open)
        try:
            first, *rest = listener.events
            transport.write(listener.sse_head[close] + _chunk(first))
            for event in rest:
                await asyncio.sleep(listener.pace)
                transport.write(_chunk(event))
            transport.write(b"0\r\n\r\n")
            stats.completed += 1
        except asyncio.CancelledError:
            stats.aborted += 1
            return
        finally:
            stats.open -= 1
        self.task = None
        if close:
            transport.close()
        else:
            self._next()


def _refusal(
    query: bytes, headers: dict[bytes, bytes], body: bytes, fe_version: str | None
) -> tuple[int, dict] | None:
    def header(name: bytes) -> str | None:
        value = headers.get(name)
        return None if value is None else value.decode("latin-1")

    fields = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    return refusal(
        fields,
        header(b"authorization"),
        header(b"x-fe-version"),
        header(b"x-signature"),
        body,
        fe_version,
    )


async def serve(
    answers: Answers,
    paces: list[float],
    verify: bool = True,
    host: str = "127.0.0.1",
    long_chars: int = 0,
) -> list[int]:
    """Listen once per pace on a free port of ``host``; returns the ports, in order."""
    loop = asyncio.get_running_loop()
    ports = []
    long = long_events(long_chars) if long_chars else b""
    for pace in paces:
        listener = _Listener(answers, pace, verify, long)
        server = await loop.create_server(
            lambda listener=listener: _Conn(listener), host, 0, backlog=4096
        )
        ports.append(server.sockets[0].getsockname()[1])
    return ports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The benchmark's fake chat.z.ai.")
    parser.add_argument(
        "--pace",
        type=float,
        action="append",
        default=[],
        help="seconds between SSE events; once per listener (default: 0)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the upstream's checks (signature, front-end version, token)",
    )
    parser.add_argument(
        "--stream",
        default="stream_glm5_plain_thinking",
        help="cassette whose completion stream is served",
    )
    parser.add_argument(
        "--long",
        type=int,
        default=0,
        help="characters of the answer a request marked LONG-ANSWER gets (0: none)",
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        ports = await serve(
            load_answers(args.stream), args.pace or [0.0], args.verify, long_chars=args.long
        )
        print("READY " + json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    sys.exit(0)


if __name__ == "__main__":
    main()
