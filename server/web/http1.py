"""The gateway's HTTP/1.1 server connection, written on ``asyncio.Protocol``.

Owns ``Http1Connection`` (one client socket: it parses request heads and bodies straight out
of ``data_received``, keeps the connection alive, serves pipelined requests in order, answers
a head over ``MAX_HEADER_BYTES`` 414/431 and a malformed one 400, each followed by a lingering
close, and tells the edge's watchdog what it waits for), ``Exchange`` (one request's side of
tornado's ``HTTPConnection``: the answer framed exactly as tornado's ``HTTP1Connection`` frames
it, its length checked against Content-Length, a write future that waits only while the
client is behind), ``Http1Params`` and ``raw_answer``. It drives tornado's ``Application`` as
tornado's ``HTTP1ServerConnection`` does (``start_request``, then ``headers_received``,
``data_received``, ``finish`` or ``on_connection_close``), so every ``RequestHandler`` runs
unchanged; tornado's stream layer under it (``IOStream``, its per-read futures, a handler
added and removed on the loop per request, a regex per header line) was a third of the CPU of
a request.
"""

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.log import app_log, gen_log
from tornado.netutil import is_valid_ip

from server.core.errors import GatewayError, client_should_retry
from server.ops.metrics import EDGE_REFUSED
from server.web.errors import error_body

__all__ = ["LINGER_BYTES", "LINGER_FOR", "Exchange", "Http1Connection", "Http1Params", "raw_answer"]

LINGER_FOR, LINGER_BYTES = 1.0, 1 << 20  # what a lingering close waits for and reads
_INPUT_CAP = 1 << 20  # bytes read ahead (pipelined) before reading pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# The whole head in one match: a request line (RFC 9112 3) and field lines (RFC 9110 5.5:
# a token, a colon, visible characters, spaces and tabs; no CR, LF or other control byte,
# so no folding), lines ending in CRLF or a bare LF. The final blank line is cut off before.
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_HEAD = re.compile(
    rf"({_TCHAR}+) ([\x21-\x7e\x80-\xff]+) (HTTP/1\.[0-9])"
    rf"(?:\r?\n{_TCHAR}+:[\t\x20-\x7e\x80-\xff]*)*"
)
_HEX = re.compile(rb"[0-9a-fA-F]+")

# What the connection does now. Reading states are the ones the watchdog times.
_HEAD_WAIT, _BODY_START, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _LAST_CRLF = range(7)
_BODY_END, _ANSWER, _LINGER, _CLOSED = 7, 8, 9, 10
_STATES = "head prepare body chunk chunk chunk chunk read answer linger closed".split()  # noqa: SIM905

_NAMES: dict[str, str] = {}  # a header name as sent -> Http-Header-Case, tornado's spelling


def _header_case(name: str) -> str:
    cased = "-".join([word.capitalize() for word in name.split("-")])
    if len(_NAMES) < 4096:  # clients' own names must not grow it for ever
        _NAMES[name] = cased
    return cased


def _length(value: str) -> int:
    """A Content-Length: digits only (``int`` would take "+1", " 1", "1_0")."""
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"not a Content-Length: {value!r}")
    return int(value)


def raw_answer(err: GatewayError, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer for ``err``, for a connection no request was parsed on.

    >>> raw_answer(GatewayError("headers_too_large", "x")).split(b"\\r\\n")[0]
    b'HTTP/1.1 431 Request Header Fields Too Large'
    """
    body = error_body(err)
    head = [
        f"HTTP/1.1 {err.status} {_REASONS[err.status]}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"x-should-retry: {'true' if client_should_retry(err.status) else 'false'}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


_REASONS = {
    400: "Bad Request",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class Http1Params:
    """What every connection of one server shares: the application, the limits, the proxy
    rules, the set of open connections, and whether the server is stopping."""

    def __init__(
        self,
        app: httputil.HTTPServerConnectionDelegate,
        *,
        xheaders: bool = False,
        protocol: str | None = None,
        trusted_downstream: list[str] | None = None,
        no_keep_alive: bool = False,
        max_header_bytes: int = 65536,
        max_body_size: int = 100 * 1024 * 1024,  # tornado's max_buffer_size
    ) -> None:
        self.app = app
        self.xheaders = xheaders
        self.protocol = protocol or "http"
        self.trusted_downstream = set(trusted_downstream or ())
        self.no_keep_alive = no_keep_alive
        self.max_header_bytes = max_header_bytes
        self.max_body_size = max_body_size
        self.connections: set[Http1Connection] = set()
        self.stopping = False  # draining: no request after the one in flight


class Context:
    """``request.connection.context`` as tornado code reads it: the peer's address and IP, the
    scheme, and, with ``xheaders``, what the proxy in front says they are (for each request:
    X-Real-IP, else the last X-Forwarded-For hop not in ``trusted_downstream``; X-Scheme, else
    X-Forwarded-Proto)."""

    def __init__(self, address: Any, family: int, params: Http1Params) -> None:
        self.address = address
        self.address_family = family
        inet = family in (socket.AF_INET, socket.AF_INET6) and address
        self.remote_ip = self._orig_remote_ip = address[0] if inet else "0.0.0.0"
        self.protocol = self._orig_protocol = params.protocol
        self.trusted_downstream = params.trusted_downstream

    def __str__(self) -> str:
        if self.address_family in (socket.AF_INET, socket.AF_INET6):
            return self.remote_ip
        return str(self.address)

    def apply_xheaders(self, fields: dict[str, list[str]]) -> None:
        self.remote_ip, self.protocol = self._orig_remote_ip, self._orig_protocol
        ip = self.remote_ip
        forwarded = fields.get("X-Forwarded-For")
        if forwarded:  # the last hop not a trusted proxy (the first if all are)
            hops = [hop.strip() for hop in ",".join(forwarded).split(",")]
            trusted = self.trusted_downstream
            ip = next((hop for hop in reversed(hops) if hop not in trusted), hops[0])
        real = fields.get("X-Real-Ip")
        if real:
            ip = ",".join(real)
        if ip != self.remote_ip and is_valid_ip(ip):
            self.remote_ip = ip
        scheme = fields.get("X-Scheme") or fields.get("X-Forwarded-Proto")
        if scheme:
            proto = ",".join(scheme).split(",")[-1].strip()
            if proto in ("http", "https"):
                self.protocol = proto


class Exchange(httputil.HTTPConnection):
    """One request and its answer on an ``Http1Connection``: what tornado's handlers see as
    ``request.connection``. The answer is framed as tornado's ``HTTP1Connection`` frames it:
    Content-Length when the handler set one (and then exactly that many bytes, or the
    connection is closed and ``HTTPOutputError`` raised), otherwise chunked for an HTTP/1.1
    answer that may have a body, none for HEAD, 204, 304, delimited by the close for
    HTTP/1.0. A write's future is done at once unless the client is behind (the transport's
    buffer over its high-water mark), then when the buffer drains."""

    def __init__(
        self,
        conn: "Http1Connection",
        method: str,
        version: str,
        keep: bool,
        length: int,
        chunked: bool,
    ) -> None:
        self.conn = conn
        self.context = conn.context
        self.method = method
        self.version = version
        self.keep = keep  # the connection serves another request after this one
        self.length, self.chunked = length, chunked  # the request body's framing
        self.expect_continue = False
        self.started = self.write_finished = self.read_finished = False
        self.chunking = False  # the answer is chunked
        self.remaining: int | None = None  # bytes of the answer's Content-Length still due
        self.close_callback: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "finished" if self.write_finished else "answering" if self.started else "reading"
        return f"<Exchange {self.method} {self.version} {state} keep={self.keep}>"

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """``callback`` runs if the client goes away after the request was read, before the
        answer is finished (while it is read, the delegate's ``on_connection_close`` does)."""
        self.close_callback = callback

    def behind(self) -> bool:
        """Whether the client is behind: more of the answer queued than the high-water mark."""
        return self.conn.paused

    def write_headers(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> "asyncio.Future[None]":
        conn = self.conn
        code = cast(httputil.ResponseStartLine, start_line).code
        head = self.method == "HEAD"
        self.started = True
        bodiless = head or code in (204, 304) or 100 <= code < 200
        if "Content-Length" in headers:
            if head or code == 304:
                self.remaining = 0
            else:
                self.remaining = _length(headers["Content-Length"])
        elif bodiless:
            self.remaining = 0 if head or code == 304 else None
        elif self.version == "HTTP/1.1":
            self.chunking = True
            headers["Transfer-Encoding"] = "chunked"
        else:
            self.keep = False  # HTTP/1.0 without a length: the close ends the body
        if self.version == "HTTP/1.1":
            if not self.keep:
                headers["Connection"] = "close"
        elif self.keep:
            headers["Connection"] = "Keep-Alive"
        lines = [f"HTTP/1.1 {code} {cast(httputil.ResponseStartLine, start_line).reason}"]
        lines += [f"{name}: {value}" for name, vs in headers._as_list.items() for value in vs]
        text = "\r\n".join(lines)
        if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
            raise ValueError(f"Illegal characters (CR or LF) in header: {text!r}")
        if conn.closing:
            return conn.failed()
        data = text.encode("latin-1") + b"\r\n\r\n"
        if chunk:
            data += self._frame(chunk)
        conn.send(data)
        return conn.write_future()

    def write(self, chunk: bytes) -> "asyncio.Future[None]":
        conn = self.conn
        if conn.closing:
            return conn.failed()
        if chunk:
            conn.send(self._frame(chunk))
        return conn.write_future()

    def _frame(self, chunk: bytes) -> bytes:
        if self.remaining is not None:
            self.remaining -= len(chunk)
            if self.remaining < 0:
                self.conn.abort()  # no framing error reaches the client
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunking:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def finish(self) -> None:
        conn = self.conn
        if self.remaining and not conn.closing:
            conn.abort()
            raise httputil.HTTPOutputError(
                f"Tried to write {self.remaining} bytes less than Content-Length"
            )
        if self.chunking and not conn.closing:
            conn.send(b"0\r\n\r\n")
        self.write_finished = True
        self.close_callback = None
        conn.answered(self)


class Http1Connection(asyncio.Protocol):
    """One client connection: requests parsed as they arrive, handed to tornado's
    application one at a time (a pipelined request waits for the answer before it), the
    answers written by its ``Exchange``. Made by ``EdgeServer.take`` from an accepted socket
    (``loop.connect_accepted_socket``); ``close()`` ends it."""

    def __init__(self, params: Http1Params, address: Any, family: int) -> None:
        self.params = params
        self.context = Context(address, family, params)
        self.transport: asyncio.Transport | None = None
        self.buf = b""  # read and not yet parsed
        self.state = _HEAD_WAIT
        # What the watchdog reads: the phase of the read waiting now, and since when.
        self.phase, self.since = "head", time.monotonic()
        self.exchange: Exchange | None = None
        self.delegate: httputil.HTTPMessageDelegate | None = None
        self.held: asyncio.Future[Any] | None = None  # a delegate future parsing waits for
        self.left = 0  # bytes of the body (or of its current chunk) still to come
        self.total = 0  # a chunked body's bytes so far
        self.paused = False  # the client is behind (the transport's buffer is over its mark)
        self.reading = True
        self.closing = False  # no more writes: closed, closing or lingering
        self.busy = False  # parsing (a delegate call that finishes an answer re-enters)
        self.waiters: list[asyncio.Future[None]] = []
        self.lost: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.linger_left = LINGER_BYTES
        self.loop = loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()  # every write's, unless behind
        self.done.set_result(None)
        params.connections.add(self)

    def __repr__(self) -> str:
        return (
            f"<Http1Connection {self.context} {_STATES[self.state]} buffered={len(self.buf)}"
            f"{' behind' if self.paused else ''}>"
        )

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.state == _CLOSED:  # closed before the transport was made
            self.transport.abort()
        elif self.params.stopping:  # accepted just before the server stopped: idle
            self._close()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state >= _LINGER:
            self.linger_left -= len(data)
            if self.linger_left <= 0:
                self._close()
            return
        self.buf = self.buf + data if self.buf else data
        if state < _ANSWER and self.held is None:
            self._parse()
        elif len(self.buf) > _INPUT_CAP:
            self._flow()

    def eof_received(self) -> bool:
        return False  # a half-close ends the connection, as tornado's stream did

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self.closing = True
        self.params.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self._release_writers()
        self._drop_delegate()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._release_writers()
        if self.state == _HEAD_WAIT and self.buf:
            self.since = time.monotonic()
            self._parse()

    # the server's side

    def overdue(self, now: float, limits: dict[str, float]) -> bool:
        """Whether a read has waited past its phase's limit (``limits`` by phase)."""
        state = self.state
        if self.held is not None or not (state == _HEAD_WAIT or _LENGTH <= state < _BODY_END):
            return False
        return now - self.since > limits[self.phase]

    def drain(self) -> None:
        """The server stops: an idle connection closes now, a busy one after its answer."""
        if self.state == _HEAD_WAIT and not self.buf and self.exchange is None:
            self._close()
        elif self.exchange is not None and not self.exchange.started:
            self.exchange.keep = False  # its answer says Connection: close

    async def close(self) -> None:
        """Close the connection; wait (a second at most, then drop what is unsent) until it is."""
        if self.state == _CLOSED:
            return
        if self.lost is None:
            self.lost = self.loop.create_future()
        if self.transport is None:
            self.connection_lost(None)
            return
        self._close()
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), LINGER_FOR)
        except TimeoutError:
            self.abort()
            await self.lost

    def abort(self) -> None:
        """Close at once, dropping what is not sent yet (tornado's stream close)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
        else:
            self.state = _CLOSED

    # what the exchange uses

    def send(self, data: bytes) -> None:
        # At once, not at the loop turn's end: joining a turn's writes saved a send() of
        # three per streamed request but delayed every event by a turn, a busy one under load.
        self.transport.write(data)  # type: ignore[union-attr]

    def write_future(self) -> "asyncio.Future[None]":
        if not self.paused:
            return self.done
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def failed(self) -> "asyncio.Future[None]":
        failed = self.loop.create_future()
        failed.set_exception(StreamClosedError())
        failed.exception()  # retrieved: nobody need wait for it
        return failed

    def answered(self, exchange: Exchange) -> None:
        """The answer is finished: read the next request, or close."""
        if exchange is not self.exchange or self.closing:
            return
        if not exchange.read_finished:
            if exchange.length or exchange.chunked:
                self._linger(b"")  # the rest of the body is read and dropped, not answered
                return
            exchange.read_finished = True  # no body: a handler that answered in prepare()
        self.exchange = self.delegate = self.held = None
        if not exchange.keep or self.params.stopping:
            self._close()
            return
        self.state, self.phase, self.since = _HEAD_WAIT, "head", time.monotonic()
        if self.buf:  # pipelined: served after a loop turn, as tornado's server loop does
            self.loop.call_soon(self._parse)

    # parsing

    def _parse(self) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            while self.held is None:
                state = self.state
                if state == _HEAD_WAIT:
                    if not self._head():
                        break
                elif state == _BODY_START:
                    self._begin_body()
                elif state == _LENGTH:
                    if not self._sized():
                        break
                elif state < _BODY_END:
                    if not self._chunks():
                        break
                elif state == _BODY_END:
                    self._body_done()
                else:
                    break
        finally:
            self.busy = False
        self._flow()

    def _flow(self) -> None:
        """Read ahead at most ``_INPUT_CAP`` bytes: reading pauses past it (a pipelining
        client, a body sent while the handler prepares) and resumes once they are taken."""
        transport = self.transport
        if transport is None or self.state >= _LINGER:
            return
        if self.reading:
            if len(self.buf) > _INPUT_CAP:
                self.reading = False
                transport.pause_reading()
        elif len(self.buf) <= _INPUT_CAP:
            self.reading = True
            transport.resume_reading()

    def _head(self) -> bool:
        buf = self.buf
        if buf[:1] in (b"\r", b"\n"):  # empty lines before a request are ignored (RFC 9112 2.2)
            buf = self.buf = buf.lstrip(b"\r\n")
        if not buf or self.paused:
            return False
        limit = self.params.max_header_bytes
        end = buf.find(b"\n\r\n")
        bare = buf.find(b"\n\n", 0, end + 1 if end >= 0 else limit + 1)
        if bare >= 0:
            end, stop = bare, bare + 2
        elif end >= 0:
            stop = end + 3
        else:
            if len(buf) >= limit:
                self._too_large(buf, limit)
            return False
        if stop > limit:
            self._too_large(buf, limit)
            return False
        self.buf = buf[stop:]
        text = buf[: end - 1 if buf[end - 1] == 13 else end].decode("latin-1")
        match = _HEAD.fullmatch(text)
        if match is None:
            self._bad("Malformed HTTP request head")
            return False
        method, path, version = match.groups()
        lines = text.split("\r\n")
        if len(lines) <= text.count("\n"):  # some lines end in a bare LF
            lines = [line.rstrip("\r") for line in text.split("\n")]
        # Filled as HTTPHeaders.add would (tornado 6.6, pinned: its two dicts), without its
        # regex per line (the match above checked every name and value) or its __init__.
        fields: dict[str, list[str]] = {}
        combined: dict[str, str] = {}
        names = _NAMES
        for line in lines[1:]:
            name, _, value = line.partition(":")
            value = value.strip(" \t")
            cased = names.get(name) or _header_case(name)
            values = fields.get(cased)
            if values is None:
                fields[cased] = [value]
                combined[cased] = value
            else:
                values.append(value)
                combined.pop(cased, None)
        headers = httputil.HTTPHeaders.__new__(httputil.HTTPHeaders)
        headers._as_list, headers._combined_cache = fields, combined
        return self._start(httputil.RequestStartLine(method, path, version), headers)

    def _start(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> bool:
        """A request head is in: check its body's framing, then hand it to the application."""
        fields = headers._as_list
        length, chunked = 0, False
        encoding = fields.get("Transfer-Encoding")
        sized = fields.get("Content-Length")
        if encoding is not None:
            if sized is not None:
                self._bad("Message with both Transfer-Encoding and Content-Length")
                return False
            if ",".join(encoding).lower() != "chunked":
                self._bad(f"Unsupported Transfer-Encoding {','.join(encoding)}")
                return False
            chunked = True
        elif sized is not None:
            value = ",".join(sized)
            if "," in value:  # repeated by a proxy: only if all the same
                pieces = [piece.lstrip(" \t") for piece in value.split(",")]
                if any(piece != pieces[0] for piece in pieces):
                    self._bad(f"Multiple unequal Content-Lengths: {value!r}")
                    return False
                value = headers["Content-Length"] = pieces[0]
            try:
                length = _length(value)
            except ValueError:
                self._bad(f"Only integer Content-Length is allowed: {value}")
                return False
        version = start_line.version
        connection = fields.get("Connection")
        told = ",".join(connection).lower() if connection else None
        if self.params.no_keep_alive or self.params.stopping:
            keep = False
        elif version == "HTTP/1.1":
            keep = told != "close"
        else:
            keep = told == "keep-alive" and (
                sized is not None or chunked or start_line.method in ("HEAD", "GET")
            )
        exchange = Exchange(self, start_line.method, version, keep, length, chunked)
        expect = fields.get("Expect")
        exchange.expect_continue = (
            version == "HTTP/1.1" and expect is not None and expect[0].lower() == "100-continue"
        )
        if self.params.xheaders:
            self.context.apply_xheaders(fields)
        self.exchange = exchange
        self.delegate = delegate = self.params.app.start_request(self, exchange)
        self.state = _BODY_START
        try:
            waits = delegate.headers_received(start_line, headers)
        except Exception as exc:
            self._failed(exc)
            return False
        if waits is not None:
            self._hold(waits)
        return True

    def _begin_body(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if exchange.chunked:
            self.state, self.total = _CHUNK_SIZE, 0
        elif exchange.length:
            if exchange.length > self.params.max_body_size:
                self._bad("Content-Length too long")
                return
            self.state, self.left = _LENGTH, exchange.length
        else:
            self._body_done()
            return
        self.phase, self.since = "body", time.monotonic()
        if exchange.expect_continue and not exchange.started:
            self.send(_CONTINUE)

    def _sized(self) -> bool:
        buf = self.buf
        if not buf:
            return False
        left = self.left
        if len(buf) <= left:
            piece, self.buf = buf, b""
        else:
            piece, self.buf = buf[:left], buf[left:]
        self.left = left = left - len(piece)
        if left == 0:
            self.state = _BODY_END
        self._deliver(piece)
        return True

    def _chunks(self) -> bool:
        """Parse what is buffered of a chunked body; deliver it as one piece per read."""
        pieces: list[bytes] = []
        while True:
            state, buf = self.state, self.buf
            if state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n", 0, 64)
                if eol < 0:
                    if len(buf) >= 64:
                        self._bad("invalid chunk size")
                        return False
                    break
                if not _HEX.fullmatch(buf, 0, eol):
                    self._bad("invalid chunk size")
                    return False
                size = int(buf[:eol], 16)
                self.buf = buf[eol + 2 :]
                if size == 0:
                    self.state = _LAST_CRLF
                    continue
                self.total += size
                if self.total > self.params.max_body_size:
                    self._bad("chunked body too large")
                    return False
                self.state, self.left = _CHUNK_DATA, size
            elif state == _CHUNK_DATA:
                if not buf:
                    break
                left = self.left
                piece = buf if len(buf) <= left else buf[:left]
                self.buf = buf[len(piece) :]
                pieces.append(piece)
                self.left = left = left - len(piece)
                if left == 0:
                    self.state = _CHUNK_END
            else:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    self._bad("improperly terminated chunk")
                    return False
                self.buf = buf[2:]
                if state == _LAST_CRLF:
                    self.state = _BODY_END
                    break
                self.state = _CHUNK_SIZE
        if pieces:
            self._deliver(b"".join(pieces) if len(pieces) > 1 else pieces[0])
        return self.state == _BODY_END

    def _deliver(self, data: bytes) -> None:
        exchange, delegate = self.exchange, self.delegate
        if exchange is None or delegate is None or exchange.write_finished:
            return
        try:
            waits = delegate.data_received(data)
        except Exception as exc:
            self._failed(exc)
            return
        if waits is not None:
            self._hold(waits)

    def _body_done(self) -> None:
        exchange, delegate = self.exchange, self.delegate
        assert exchange is not None and delegate is not None
        exchange.read_finished = True
        self.state = _ANSWER
        if exchange.write_finished:
            return
        try:
            delegate.finish()
        except Exception as exc:
            self._failed(exc)

    def _hold(self, waits: Awaitable[Any]) -> None:
        """Parse no further until the delegate's ``waits`` is done (a streamed handler's
        ``prepare``, a body chunk it takes its time over)."""
        future = asyncio.ensure_future(waits)
        if future.done():
            self._released(future, later=False)
            return
        self.held = future
        future.add_done_callback(self._released)

    def _released(self, future: "asyncio.Future[Any]", later: bool = True) -> None:
        if later:
            if future is not self.held:
                return  # the exchange is over
            self.held = None
        if future.cancelled() or future.exception() is not None:
            try:
                future.result()
            except BaseException as exc:
                self._failed(exc)
            return
        if later and self.state < _ANSWER:
            self._parse()

    # ending

    def _failed(self, exc: BaseException) -> None:
        """A delegate method raised: a bad request is a 400; anything else is logged."""
        if isinstance(exc, httputil.HTTPInputError):
            self._bad(str(exc))
            return
        app_log.error("Uncaught exception", exc_info=exc)
        self._drop_delegate()
        self.abort()

    def _bad(self, reason: str) -> None:
        gen_log.info("Malformed HTTP message from %s: %s", self.context, reason)
        exchange = self.exchange
        answer = b""
        if exchange is None or not exchange.started:
            answer = raw_answer(GatewayError("invalid_request", f"malformed request: {reason}"))
        self._drop_delegate()
        self._linger(answer)

    def _too_large(self, buf: bytes, limit: int) -> None:
        if b"\n" in buf[:limit]:
            err = GatewayError("headers_too_large", f"the request headers are over {limit} bytes")
        else:
            err = GatewayError("uri_too_long", f"the request line is over {limit} bytes")
        EDGE_REFUSED.labels(err.kind).inc()
        self._linger(raw_answer(err))

    def _linger(self, answer: bytes) -> None:
        """Send ``answer``, stop writing, read and drop what comes until the client closes
        (or ``LINGER_FOR`` s, ``LINGER_BYTES``), then close: closing with unread bytes
        resets the connection, and a reset can destroy the answer before the client reads it."""
        transport = self.transport
        self.state, self.buf, self.closing = _LINGER, b"", True
        if transport is None:
            return
        if answer:
            transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        if not self.reading:
            self.reading = True
            transport.resume_reading()
        self.timer = self.loop.call_later(LINGER_FOR, self._close)

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()  # what is queued is sent first

    def _drop_delegate(self) -> None:
        """Tell the request in flight, if any, that its client is gone."""
        exchange, delegate = self.exchange, self.delegate
        self.exchange = self.delegate = self.held = None
        if exchange is None or exchange.write_finished:
            return
        try:
            if not exchange.read_finished and delegate is not None:
                delegate.on_connection_close()
            elif exchange.close_callback is not None:
                callback, exchange.close_callback = exchange.close_callback, None
                callback()
        except Exception:
            app_log.error("Uncaught exception", exc_info=True)

    def _release_writers(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
