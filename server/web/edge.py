"""The HTTP edge: accepting connections without spinning, capping them, and timing them.

Owns ``EdgeServer``, the gateway's HTTP server: tornado's ``Application`` served by the
gateway's own connections (``server.web.http1``, on ``asyncio.Protocol``), with what tornado's
``HTTPServer`` did not do:

- Out of file descriptors (EMFILE/ENFILE), ``accept`` fails while the listening socket stays
  readable: tornado's loop retried at once, forever (99 % CPU, 135 k tracebacks in 16 s, new
  clients hanging). Here a descriptor kept in reserve is given back to accept each waiting
  client and answer it 503 (the trick libuv uses); if even that fails, accepting pauses, 50 ms
  doubling to 1 s. One log line when an episode starts, one when it ends.
- ``MAX_CONNECTIONS``: a connection over the cap is answered 503 (JSON, ``Retry-After``)
  and closed, before it costs a protocol and a request.
- ``IDLE_CONNECTION_TIMEOUT`` (a connection that sends no whole request head in time: idle,
  or a slowloris) and ``BODY_TIMEOUT`` (a body that does not arrive in time, all of it) are
  kept by one watchdog per server that looks at every connection a few times a second, not
  by a timeout future per read (tornado's: a task, a timer and a chained future each, 6 % of
  the CPU of a request in the 12-03 profile).
- Stopping (the drain on SIGTERM): no new connections, idle kept-alive ones closed at once,
  busy ones after their answer.

An answer sent outside a request (503 here, 414/431/400 in ``server.web.http1``) is followed
by a lingering close (what the client still sends is read and dropped for a moment): closing
a socket with unread bytes resets the connection, and a reset can destroy the answer before
the client reads it.
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
from tornado.httputil import HTTPServerConnectionDelegate
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from server.core.errors import GatewayError
from server.ops.metrics import ACCEPT_PAUSES, EDGE_REFUSED
from server.web.http1 import LINGER_BYTES, LINGER_FOR, Http1Connection, Http1Params, raw_answer

__all__ = ["EdgeServer"]

_OUT_OF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PAUSE_FIRST, _PAUSE_MAX = 0.05, 1.0  # seconds accepting pauses when out of descriptors
_BATCH = 128  # connections accepted per readiness event (tornado's own number)


def _reserve() -> int | None:
    """A descriptor held only to be given back when the process runs out of them."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class _Lingering:
    """Send ``answer`` on ``sock``, stop writing, read and drop what comes until the client
    closes (or ``LINGER_FOR`` s, ``LINGER_BYTES``), then close."""

    def __init__(self, sock: socket.socket, answer: bytes) -> None:
        self.sock, self.left, self.loop = sock, LINGER_BYTES, IOLoop.current()
        try:
            sock.setblocking(False)
            sock.send(answer)  # a few hundred bytes into an empty send buffer
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.loop.add_handler(sock, self._readable, IOLoop.READ)
        self.timer = self.loop.call_later(LINGER_FOR, self._close)

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

    def _ready(self, _fd: Any, _events: int, looked_again: bool = False) -> None:
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
                if not looked_again:
                    # Connections that ended in this loop turn give their descriptors back
                    # at its end (asyncio and uvloop close a transport's socket then): look
                    # again after it before answering anyone 503 (clients that all left at
                    # once, then a new one, were told 503 with descriptors to spare).
                    self.loop.remove_handler(self.sock)
                    self.timer = self.loop.call_later(0, self._look_again)
                    return
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

    def _look_again(self) -> None:
        self._resume()
        if not self.stopped:
            self._ready(self.sock, IOLoop.READ, looked_again=True)

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.loop.remove_timeout(self.timer)
        self.loop.remove_handler(self.sock)
        if self.reserve is not None:
            os.close(self.reserve)
            self.reserve = None


class EdgeServer:
    """The gateway's HTTP server: tornado's ``app`` on ``Http1Connection`` objects, with its own
    accept loop, connection cap and watchdog. The options are tornado's ``HTTPServer``
    ones the gateway uses, plus ``max_connections``; the methods are the ones it calls
    (``add_sockets``, ``listen``, ``stop``, ``close_all_connections``)."""

    def __init__(
        self,
        app: HTTPServerConnectionDelegate,
        *,
        no_keep_alive: bool = False,
        xheaders: bool = False,
        protocol: str | None = None,
        max_header_size: int | None = None,
        idle_connection_timeout: float | None = None,
        body_timeout: float | None = None,
        max_body_size: int | None = None,
        max_buffer_size: int | None = None,
        trusted_downstream: list[str] | None = None,
        max_connections: int = 4096,
    ) -> None:
        self.params = Http1Params(
            app,
            xheaders=xheaders,
            protocol=protocol,
            trusted_downstream=trusted_downstream,
            no_keep_alive=no_keep_alive,
            max_header_bytes=max_header_size or 65536,
            max_body_size=max_body_size or max_buffer_size or 100 * 1024 * 1024,
        )
        # The watchdog keeps both (see the module docstring), as tornado's defaults: 1 h.
        self.limits = {
            "head": idle_connection_timeout or 3600.0,
            "body": body_timeout or 3600.0,
        }
        self._watchdog: asyncio.TimerHandle | None = None
        self._sockets: dict[int, tuple[socket.socket, _Acceptor]] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self.max_connections = max_connections
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

    def __repr__(self) -> str:
        return f"<EdgeServer connections={len(self.connections)} sockets={len(self._sockets)}>"

    @property
    def connections(self) -> set[Http1Connection]:
        return self.params.connections

    def listen(self, port: int, address: str | None = None) -> None:
        self.add_sockets(bind_sockets(port, address))

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = (sock, _Acceptor(self, sock))
        if self._watchdog is None:
            self._watch()

    def stop(self) -> None:
        """Stop accepting (the listening sockets are closed) and drain: idle connections are
        closed now, busy ones once their answer is sent."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for sock, acceptor in self._sockets.values():
            acceptor.stop()
            sock.close()
        self._sockets.clear()
        self.params.stopping = True
        for conn in list(self.connections):
            conn.drain()

    async def close_all_connections(self) -> None:
        """Close every connection and wait until each is (after ``stop``: the drain's end)."""
        while self.connections:
            await next(iter(self.connections)).close()

    def _watch(self) -> None:
        """Close each connection whose head or body is overdue; look again soon."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.overdue(now, self.limits):
                conn.abort()
        every = min(1.0, min(self.limits.values()) / 4)
        self._watchdog = loop.call_later(every, self._watch)

    def take(self, conn: socket.socket, address: Any) -> None:
        """Serve an accepted connection, or answer 503 when the cap is reached."""
        if len(self.connections) >= self.max_connections:
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
                # Each event of a stream leaves at once; a whole answer is one write anyway.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            protocol = Http1Connection(self.params, address, conn.family)
        except Exception:
            logger.exception("cannot serve a new connection")
            conn.close()
            return
        task = asyncio.get_running_loop().create_task(self._open(conn, protocol))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open(self, conn: socket.socket, protocol: Http1Connection) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, conn)
        except Exception:
            logger.exception("cannot serve a new connection")
            self.connections.discard(protocol)
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
