"""The HTTP edge: accepting connections without spinning, capping them, and answering a
request whose head is too large.

Owns ``EdgeServer``, the gateway's tornado ``HTTPServer``. Three things tornado's own accept
loop and streams do not do:

- Out of file descriptors (EMFILE/ENFILE), ``accept`` fails while the listening socket stays
  readable: tornado's loop retried at once, forever (99 % CPU, 135 k tracebacks in 16 s, new
  clients hanging). Here a descriptor kept in reserve is given back to accept each waiting
  client and answer it 503 (the trick libuv uses); if even that fails, accepting pauses, 50 ms
  doubling to 1 s. One log line when an episode starts, one when it ends.
- ``MAX_CONNECTIONS``: a connection over the cap is answered 503 (JSON, ``Retry-After``)
  and closed, before it costs a stream and a request.
- A request line or headers over ``MAX_HEADER_BYTES``: tornado closed the connection without
  a word; here the client gets 414 (the request line alone is too long) or 431.
- ``IDLE_CONNECTION_TIMEOUT`` (a connection that sends no whole request head in time: idle,
  or a slowloris) and ``BODY_TIMEOUT`` (a body that does not arrive in time, all of it) are
  kept by one watchdog per server that looks at every connection a few times a second, not
  by tornado, which wraps each request's two reads in a timeout future of their own (a task,
  a timer and a chained future each: 6 % of the CPU of a request in the 12-03 profile).

An answer sent outside tornado is followed by a lingering close (what the client still sends
is read and dropped for a moment): closing a socket with unread bytes resets the connection,
and a reset can destroy the answer before the client reads it.
"""

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from loguru import logger
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, UnsatisfiableReadError

from server.core.errors import GatewayError, client_should_retry
from server.ops.metrics import ACCEPT_PAUSES, EDGE_REFUSED
from server.web.errors import error_body

__all__ = ["EdgeServer", "raw_answer"]

_OUT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PAUSE_FIRST, _PAUSE_MAX = 0.05, 1.0  # seconds accepting pauses when out of descriptors
_BATCH = 128  # connections accepted per readiness event (tornado's own number)
_LINGER_FOR, _LINGER_BYTES = 1.0, 1 << 20  # what a lingering close waits for and reads


def _reserve() -> int | None:
    """A descriptor held only to be given back when the process runs out of them."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def raw_answer(err: GatewayError, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer for ``err``, for a connection tornado never parsed a request of.

    >>> raw_answer(GatewayError("headers_too_large", "x")).split(b"\\r\\n")[0]
    b'HTTP/1.1 431 Request Header Fields Too Large'
    """
    body = error_body(err)
    reason = _REASONS[err.status]
    head = [
        f"HTTP/1.1 {err.status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"x-should-retry: {'true' if client_should_retry(err.status) else 'false'}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


_REASONS = {414: "URI Too Long", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class _Lingering:
    """Send ``answer`` on ``sock``, stop writing, read and drop what comes until the client
    closes (or ``_LINGER_FOR`` s, ``_LINGER_BYTES``), then close."""

    def __init__(self, sock: socket.socket, answer: bytes) -> None:
        self.sock, self.left, self.loop = sock, _LINGER_BYTES, IOLoop.current()
        try:
            sock.setblocking(False)
            sock.send(answer)  # a few hundred bytes into an empty send buffer
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.loop.add_handler(sock, self._readable, IOLoop.READ)
        self.timer = self.loop.call_later(_LINGER_FOR, self._close)

    def _readable(self, _fd: Any, _events: int) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.left -= len(data)
        if not data or self.left <= 0:
            self.loop.remove_timeout(self.timer)
            self._close()

    def _close(self) -> None:
        self.loop.remove_handler(self.sock)
        self.sock.close()


class _EdgeStream(IOStream):
    """A client connection that answers 414/431 when its request head is over the limit
    (tornado's stream closes itself with ``UnsatisfiableReadError`` then, saying nothing)."""

    max_header_bytes = 65536
    # What the connection is reading now and since when (the watchdog's view): "head" from
    # the start of a request head, "body" from the first read of its body, whole.
    phase = "head"
    since = 0.0

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Any:
        self.phase, self.since = "head", time.monotonic()  # only request heads
        return super().read_until_regex(regex, max_bytes)

    def read_bytes(self, num_bytes: int, partial: bool = False) -> Any:
        self._body_read()
        return super().read_bytes(num_bytes, partial)

    def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> Any:
        self._body_read()  # a chunked body's size lines
        return super().read_until(delimiter, max_bytes)

    def _body_read(self) -> None:
        if self.phase != "body":
            self.phase, self.since = "body", time.monotonic()

    def overdue(self, now: float, limits: dict[str, float]) -> bool:
        """Whether a read is waiting past its phase's limit."""
        return self._read_future is not None and now - self.since > limits[self.phase]

    def set_nodelay(self, value: bool) -> None:
        """Left on from accept (``EdgeServer.take``): tornado turns it on and off around each
        chunked answer, two system calls per streamed request. Always on, a whole answer is
        still one write, and each event of a stream leaves at once, as it should."""

    def close(self, exc_info: Any = False) -> None:
        head_too_long = (
            isinstance(exc_info, UnsatisfiableReadError)
            and self._read_regex is not None  # reading a request head, not a chunk size
            and not self.closed()
            and not self.writing()
        )
        if not head_too_long:
            super().close(exc_info)
            return
        limit = self.max_header_bytes
        if b"\n" in self._read_buffer[:limit]:
            err = GatewayError("headers_too_large", f"the request headers are over {limit} bytes")
        else:
            err = GatewayError("uri_too_long", f"the request line is over {limit} bytes")
        try:
            kept = self.socket.dup()
        except OSError:  # out of descriptors: it can only be closed
            kept = None
        super().close(exc_info)
        EDGE_REFUSED.labels(err.kind).inc()
        if kept is not None:
            _Lingering(kept, raw_answer(err))


class _Acceptor:
    """Accepts connections on one listening socket. Out of descriptors, it gives back a
    descriptor it keeps in reserve to accept one waiting client at a time and answer it 503
    (so clients are told rather than left hanging); when even that fails, it pauses."""

    def __init__(self, server: "EdgeServer", sock: socket.socket) -> None:
        self.server, self.sock, self.loop = server, sock, IOLoop.current()
        self.reserve = _reserve()
        self.paused_since: float | None = None  # when this episode out of descriptors began
        self.pause = _PAUSE_FIRST
        self.failures = self.shed = 0
        self.timer: object | None = None
        self.stopped = False
        self.loop.add_handler(sock, self._ready, IOLoop.READ)

    def _ready(self, _fd: Any, _events: int) -> None:
        for _ in range(_BATCH):
            try:
                conn, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF:
                    raise
                self._out_of_descriptors(exc)
                if not self._shed_one(exc):
                    return
                continue
            if self.paused_since is not None:
                logger.warning(
                    "accepting connections again after {:.1f} s out of file descriptors "
                    "({} failed accepts, {} clients answered 503)",
                    time.monotonic() - self.paused_since,
                    self.failures,
                    self.shed,
                )
                self.paused_since, self.failures, self.shed = None, 0, 0
            self.server.take(conn, address)

    def _out_of_descriptors(self, exc: OSError) -> None:
        self.failures += 1
        if self.paused_since is None:
            self.paused_since, self.pause = time.monotonic(), _PAUSE_FIRST
            ACCEPT_PAUSES.inc()
            logger.error(
                "out of file descriptors ({}: {}) with {} connections open: new clients are "
                "answered 503 until some close (raise the limit, ulimit -n, or lower "
                "MAX_CONNECTIONS)",
                errno.errorcode.get(exc.errno or 0, exc.errno),
                exc.strerror,
                len(self.server.connections),
            )

    def _shed_one(self, exc: OSError) -> bool:
        """Answer one waiting client 503 with the reserve descriptor; True to go on
        accepting. Without a reserve (taken meanwhile), accepting pauses instead, 50 ms
        doubling to 1 s while it keeps failing."""
        if self.reserve is not None and exc.errno in (errno.EMFILE, errno.ENFILE):
            os.close(self.reserve)
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                self.reserve = _reserve()
                return False  # nobody waiting: the socket is no longer readable
            except OSError:
                conn = None
            if conn is not None:
                self.shed += 1
                EDGE_REFUSED.labels("out_of_descriptors").inc()
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(self.server.no_descriptors)
                    conn.shutdown(socket.SHUT_WR)
                conn.close()  # no lingering: the descriptor is the reserve's
            self.reserve = _reserve()
            if conn is not None and self.reserve is not None:
                return True
        self.loop.remove_handler(self.sock)
        delay, self.pause = self.pause, min(self.pause * 2, _PAUSE_MAX)
        self.timer = self.loop.call_later(delay, self._resume)
        return False

    def _resume(self) -> None:
        self.timer = None
        if not self.stopped:
            self.loop.add_handler(self.sock, self._ready, IOLoop.READ)

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.loop.remove_timeout(self.timer)
        self.loop.remove_handler(self.sock)
        if self.reserve is not None:
            os.close(self.reserve)
            self.reserve = None


class EdgeServer(HTTPServer):
    """tornado's HTTP server with the gateway's own accept loop and connection limits."""

    def initialize(self, *args: Any, max_connections: int = 4096, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        params = self.conn_params
        # The watchdog keeps both (see the module docstring); tornado keeps neither.
        self.limits = {
            "head": kwargs.get("idle_connection_timeout") or 3600.0,
            "body": kwargs.get("body_timeout") or 3600.0,
        }
        params.header_timeout = params.body_timeout = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.max_connections = max_connections
        self.max_header_bytes = self.conn_params.max_header_size
        self._full_since: float | None = None
        self._refused = 0
        self.no_descriptors = raw_answer(
            GatewayError("too_many_connections", "this gateway process is out of file descriptors"),
            retry_after=1,
        )
        self._busy = raw_answer(
            GatewayError(
                "too_many_connections",
                f"this gateway process has its MAX_CONNECTIONS ({max_connections}) open",
            ),
            retry_after=1,
        )

    @property
    def connections(self) -> set[HTTP1ServerConnection]:
        return self._connections

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = _Acceptor(self, sock).stop
        if self._watchdog is None:
            self._watch()

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().stop()

    def _watch(self) -> None:
        """Close each connection whose head or body is overdue; look again soon."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for conn in list(self._connections):
            stream = conn.stream
            if isinstance(stream, _EdgeStream) and stream.overdue(now, self.limits):
                stream.close()
        every = min(1.0, min(self.limits.values()) / 4)
        self._watchdog = loop.call_later(every, self._watch)

    def take(self, conn: socket.socket, address: Any) -> None:
        """Serve an accepted connection, or answer 503 when the cap is reached."""
        if len(self._connections) >= self.max_connections:
            self._refuse(conn)
            return
        if self._full_since is not None:
            logger.warning(
                "below MAX_CONNECTIONS again after {:.1f} s; {} connection(s) were answered 503",
                time.monotonic() - self._full_since,
                self._refused,
            )
            self._full_since, self._refused = None, 0
        try:
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = _EdgeStream(
                conn, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size
            )
            stream.max_header_bytes = self.max_header_bytes
            self.handle_stream(stream, address)
        except Exception:
            logger.exception("cannot serve a new connection")
            conn.close()

    def _refuse(self, conn: socket.socket) -> None:
        self._refused += 1
        EDGE_REFUSED.labels("max_connections").inc()
        if self._full_since is None:
            self._full_since = time.monotonic()
            logger.warning(
                "MAX_CONNECTIONS ({}) open: new connections are answered 503 until some close",
                self.max_connections,
            )
        _Lingering(conn, self._busy)
