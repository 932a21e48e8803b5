"""A small streaming HTTP/1.1 client for the upstream, built on tornado's own connection code.

Owns ``open_stream()`` and ``Exchange``. Tornado's ``AsyncHTTPClient`` cannot give a caller the
socket of a fetch in flight, so a client that hangs up would leave the upstream fetch running
until its next chunk; here every exchange holds its own ``IOStream`` and ``close()`` shuts it at
once. The body is read with backpressure (at most a few chunks are queued) and with explicit
timeouts: connect, time to response headers, and idle time between chunks. Connections whose
response was read to its end are kept alive for the next request (no new TCP and TLS
handshake per request); a kept connection the upstream closed meanwhile is replaced once,
transparently, when it answers nothing at all.
"""

import asyncio
import collections
import ssl
import time
import weakref
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

__all__ = ["Exchange", "Timeouts", "TransportError", "open_exchanges", "open_stream"]


class TransportError(Exception):
    """The upstream could not be reached, timed out, or closed the connection early."""

    def __init__(self, reason: str, timeout: bool = False, unanswered: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout
        self.unanswered = unanswered  # not a byte came back: safe to try a fresh connection


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    headers: float = 60.0
    idle: float = 120.0


_END = object()
_QUEUE_DEPTH = 4
_tcp_client = TCPClient()
_open = 0  # exchanges whose socket is open: a leak shows here (and in /metrics)
_IDLE_FOR = 30.0  # seconds an idle upstream connection is kept
_IDLE_MAX = 64  # idle connections kept per upstream host
# Per event loop: a stream belongs to the loop that made it (tests run many loops).
_idle: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def _pool() -> dict[tuple[str, str, int], list[tuple[IOStream, float]]]:
    return _idle.setdefault(asyncio.get_running_loop(), {})


def _take_idle(key: tuple[str, str, int]) -> IOStream | None:
    streams = _pool().get(key)
    now = time.monotonic()
    while streams:
        stream, since = streams.pop()
        if not stream.closed() and now - since < _IDLE_FOR:
            return stream
        stream.close()
    return None


def _give_idle(key: tuple[str, str, int], stream: IOStream) -> None:
    streams = _pool().setdefault(key, [])
    if stream.closed() or len(streams) >= _IDLE_MAX:
        stream.close()
    else:
        streams.append((stream, time.monotonic()))


def open_exchanges() -> int:
    return _open


_ssl_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class Exchange(httputil.HTTPMessageDelegate):
    """One upstream request and its streamed response.

    >>> exchange = await open_stream("POST", url, headers, body, Timeouts())
    >>> exchange.status, exchange.headers["Content-Type"]
    >>> async for chunk in exchange: ...
    >>> exchange.close()   # at any time: the socket is closed at once
    """

    def __init__(self, stream: IOStream, timeouts: Timeouts, key: tuple[str, str, int]) -> None:
        self.status = 0
        self.reason = ""
        self.headers = httputil.HTTPHeaders()
        self.bytes_read = 0
        self.closed = False
        self._stream = stream
        self._timeouts = timeouts
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: collections.deque[object] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._error: TransportError | None = None
        self._key = key
        self._complete = False  # the response was read to its end
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_data = asyncio.get_running_loop().time()
        self.reader: asyncio.Future[bool] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"status={self.status or 'pending'}"
        return f"<Exchange {state} read={self.bytes_read}B queued={len(self._chunks)}>"

    # HTTPMessageDelegate: called by tornado's HTTP1Connection

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.status, self.reason, self.headers = start_line.code, start_line.reason, headers
        if not self._head.done():
            self._head.set_result(None)

    def _check_idle(self) -> None:
        """One timer per silence, not one per chunk: re-armed for what is left of it."""
        self._watchdog = None
        if self.closed or self._complete:
            return
        quiet = asyncio.get_running_loop().time() - self._last_data
        idle = self._timeouts.idle
        if quiet < idle:
            self._watchdog = asyncio.get_running_loop().call_later(idle - quiet, self._check_idle)
            return
        self._error = TransportError(f"the upstream sent nothing for {idle:g} s", timeout=True)
        self.close()

    def data_received(self, chunk: bytes) -> "asyncio.Future[None] | None":
        self._last_data = asyncio.get_running_loop().time()
        self.bytes_read += len(chunk)
        self._push(chunk)
        if len(self._chunks) < _QUEUE_DEPTH:
            return None
        self._room = asyncio.get_running_loop().create_future()
        return self._room

    def finish(self) -> None:
        self._complete = True
        self._push(_END)

    def on_connection_close(self) -> None:
        if not self.closed and self._error is None:
            when = "mid-response" if self.status else "before answering"
            self._error = TransportError(f"the upstream closed the connection {when}")
        self._push(_END)
        self._release_head()

    # Consumer side

    async def wait_head(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._head), self._timeouts.headers)
        except TimeoutError:
            self.close()
            raise TransportError(
                f"no response headers within {self._timeouts.headers:g} s", timeout=True
            ) from None

    def __aiter__(self) -> "Exchange":
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            loop = asyncio.get_running_loop()
            self._wake = loop.create_future()
            if self._watchdog is None:
                self._watchdog = loop.call_later(self._timeouts.idle, self._check_idle)
            await self._wake
        item = self._chunks.popleft()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        if item is _END:
            self._chunks.appendleft(_END)
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        parts, size = [], 0
        async for chunk in self:
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
        return b"".join(parts)[:limit]

    def close(self) -> None:
        """Close the upstream socket now; safe to call more than once."""
        if not self.closed:
            global _open
            _open -= 1
            self.closed = True
            if self._watchdog is not None:
                self._watchdog.cancel()
            if self._reusable():
                self.reader.add_done_callback(self._hand_back)  # type: ignore[union-attr]
            else:
                self._stream.close()
            self._push(_END)
            self._release_head()

    def reader_done(self, reader: "asyncio.Future[bool]") -> None:
        """However tornado's reading ended (it may raise without telling the delegate),
        the consumer must learn it: an end that was not ``finish()`` is an error."""
        if not reader.cancelled():
            reader.exception()  # retrieved: tornado already logged what matters
        if not self._complete:
            self.on_connection_close()

    def _reusable(self) -> bool:
        return (
            self._complete
            and self._error is None
            and self.reader is not None
            and self.headers.get("Connection", "").lower() != "close"
        )

    def _hand_back(self, reader: "asyncio.Future[bool]") -> None:
        if not reader.cancelled() and reader.exception() is None and reader.result():
            _give_idle(self._key, self._stream)
        else:
            self._stream.close()

    def _release_head(self) -> None:
        if not self._head.done():
            self._head.set_result(None)

    def _push(self, item: object) -> None:
        self._chunks.append(item)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


async def open_stream(
    method: str, url: str, headers: dict[str, str], body: bytes | None, timeouts: Timeouts
) -> Exchange:
    """Send a request and return once the response headers arrived."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    key = (parts.scheme, parts.hostname or "", parts.port or (443 if https else 80))
    stream = _take_idle(key)
    if stream is not None:
        try:
            return await _exchange(stream, key, method, parts, headers, body, timeouts)
        except TransportError as exc:
            if not exc.unanswered:
                raise  # a kept connection that answered something: a real failure
    stream = await _connect(key, timeouts)
    return await _exchange(stream, key, method, parts, headers, body, timeouts)


async def _connect(key: tuple[str, str, int], timeouts: Timeouts) -> IOStream:
    scheme, host, port = key
    started = time.monotonic()
    try:
        stream = await _tcp_client.connect(
            host,
            port,
            ssl_options=_tls() if scheme == "https" else None,
            timeout=timeouts.connect,
        )
    except (OSError, StreamClosedError, TimeoutError) as exc:
        timed_out = isinstance(exc, TimeoutError) or time.monotonic() - started >= timeouts.connect
        raise TransportError(
            f"cannot connect to {host}:{port}: {exc or 'timeout'}", timeout=timed_out
        ) from None
    stream.set_nodelay(True)
    return stream


async def _exchange(
    stream: IOStream,
    key: tuple[str, str, int],
    method: str,
    parts: SplitResult,
    headers: dict[str, str],
    body: bytes | None,
    timeouts: Timeouts,
) -> Exchange:
    exchange = Exchange(stream, timeouts, key)
    global _open
    _open += 1
    conn = HTTP1Connection(stream, True, HTTP1ConnectionParameters(decompress=True))
    target = parts.path + ("?" + parts.query if parts.query else "")
    head = httputil.HTTPHeaders(headers)
    head["Host"] = parts.netloc
    head.setdefault("Accept-Encoding", "gzip")
    if body is not None:
        head["Content-Length"] = str(len(body))
    try:
        conn.write_headers(httputil.RequestStartLine(method, target, "HTTP/1.1"), head, body)
        conn.finish()
    except StreamClosedError:
        exchange.close()
        raise TransportError(
            f"the connection to {key[1]}:{key[2]} closed while sending", unanswered=True
        ) from None
    exchange.reader = asyncio.ensure_future(conn.read_response(exchange))
    exchange.reader.add_done_callback(exchange.reader_done)
    try:
        await exchange.wait_head()
    except asyncio.CancelledError:
        exchange.close()
        raise
    if exchange.status == 0:
        exchange.close()
        error = exchange._error or TransportError("the upstream closed before answering")
        error.unanswered = exchange.bytes_read == 0 and not error.timeout
        raise error
    return exchange
