"""A small streaming HTTP/1.1 client for the upstream, written on ``asyncio.Protocol``.

Owns ``open_stream()``, ``Exchange``, ``ConnectionPool`` (the kept connections, one per
transport: no module state) and ``NativeTransport``. A general client (tornado's
``AsyncHTTPClient``, even its ``HTTP1Connection``) costs several hundred microseconds of CPU
per streamed event and cannot hand a caller the socket of a fetch in flight; this one parses
the response straight out of ``data_received`` (status line, headers, chunked or sized body,
gzip), hands the consumer every body byte of one socket read as one chunk, and ``close()``
shuts the socket at once. The body is read with backpressure (reading pauses while a few
chunks wait) and with explicit timeouts: connect, time to response headers, and idle time
between chunks. Connections whose response was read to its end are kept alive for the next
request; an answer the caller stops reading after its last event is drained in the
background so its connection is kept too; a kept connection the upstream closed meanwhile is
replaced once, transparently, when it answers nothing at all.
Through an egress ``Proxy`` the same connection is made by first opening a tunnel: HTTP
``CONNECT`` (basic credentials) or SOCKS5 (RFC 1928, username/password of RFC 1929, the host
name resolved by the proxy), then TLS over it for an https upstream; kept connections are
pooled per proxy, so a route's connections never serve another route.
"""

import asyncio
import base64
import collections
import ipaddress
import socket
import ssl
import struct
import time
import weakref
import zlib
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "SOCKS_REPLIES",
    "Carrier",
    "ConnectionPool",
    "Exchange",
    "NativeTransport",
    "Proxy",
    "Timeouts",
    "Transport",
    "TransportError",
    "open_exchanges",
    "open_stream",
]


class TransportError(Exception):
    """The upstream could not be reached, timed out, or closed the connection early."""

    def __init__(
        self, reason: str, timeout: bool = False, unanswered: bool = False, proxy: bool = False
    ) -> None:
        super().__init__(reason)
        self.timeout = timeout
        self.unanswered = unanswered  # not a byte came back: safe to try a fresh connection
        # The egress proxy itself failed (unreachable, silent, or refusing us), not the
        # upstream behind it: the route is at fault, never the upstream or a token.
        self.proxy = proxy


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    headers: float = 60.0
    idle: float = 120.0


@dataclass(frozen=True, slots=True)
class Proxy:
    """An egress proxy. ``label`` is the only form that may be shown: credentials masked."""

    scheme: str  # "http" (CONNECT tunnel) or "socks5"
    host: str
    port: int
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str) -> "Proxy":
        """``http://[user:pass@]host:port`` or ``socks5://...`` (``socks5h`` is the same:
        names are always resolved by the proxy). Raises ``ValueError`` naming what is wrong,
        never echoing the credentials."""
        parts = urlsplit(url.strip())
        scheme = {"socks5h": "socks5"}.get(parts.scheme, parts.scheme)
        if scheme not in _PROXY_PORTS:
            raise ValueError(
                f"proxy scheme {parts.scheme or '(none)'!r} is not supported: use http:// "
                "(CONNECT) or socks5://"
            )
        try:
            port = parts.port or _PROXY_PORTS[scheme]
        except ValueError:
            raise ValueError("a proxy URL has a bad port") from None
        if not parts.hostname:
            raise ValueError("a proxy URL has no host")
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        return cls(scheme, parts.hostname, port, user, password)

    @property
    def label(self) -> str:
        who = "***@" if self.username or self.password else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{who}{host}:{self.port}"

    def __repr__(self) -> str:
        return f"<Proxy {self.label}>"


_PROXY_PORTS = {"http": 8080, "socks5": 1080}

Key = tuple[str, str, int, Proxy | None]  # scheme, host, port, the route's proxy

_END = object()
_QUEUE_DEPTH = 4  # chunks waiting for the consumer before reading pauses
_HEAD_LIMIT = 64 << 10  # bytes of status line and headers
_IDLE_FOR = 30.0  # seconds an idle upstream connection is kept
# Idle connections kept per upstream host: a worker at c=50 has 50 completions and up to 64
# guest sign-ins of a refill (state.guests) in flight; with 64 kept, 0.18 connections were
# opened per request there (and ~0.5 at c=200), with 128 none (0.1).
_IDLE_MAX = 128
_DRAIN_FOR = 2.0  # seconds an abandoned, finished answer may take to reach its end
_open = 0  # exchanges not yet closed: a leak shows here (and in /metrics)

# Where the response parser is (``_Connection._parse`` moves between them).
_HEAD, _SIZED, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


def open_exchanges() -> int:
    return _open


class Carrier(Protocol):
    """What an ``Exchange`` asks of what carries it: a socket of this module
    (``_Connection``) or a libcurl transfer (``server.impersonate``)."""

    exchange: "Exchange | None"

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def release(self, exchange: "Exchange", drain: bool) -> None: ...

    def close(self) -> None: ...


class _Malformed(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One upstream socket and the parser of the response now arriving on it."""

    def __init__(self, key: Key, pool: "ConnectionPool | None") -> None:
        self.key = key
        self.pool = pool  # where it waits for the next request once answered (None: closed)
        if pool is not None:
            pool.lend(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reusable = False
        self.exchange: Exchange | None = None
        self._draining: asyncio.TimerHandle | None = None
        self._buf = bytearray()
        self._state = _DONE
        self._left = 0
        self._inflate: zlib._Decompress | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, exchange: "Exchange", raw: bytes) -> None:
        self.exchange, self.reusable = exchange, False
        self._state, self._inflate = _HEAD, None
        self.transport.write(raw)  # type: ignore[union-attr]

    def close(self) -> None:
        self.exchange = None
        # abort, not close: over TLS close() first waits for the peer's close_notify (up to
        # 30 s), and a TLS front (nginx) that sees bytes pending does not drop the upstream
        # request meanwhile: a client hanging up would not cancel the upstream at once.
        self.transport.abort()  # type: ignore[union-attr]

    def drain(self) -> None:
        """The caller is done with an answer that is not at its end yet: read it out quietly,
        then keep the connection; give up after a moment."""
        self.exchange = None
        self._draining = asyncio.get_running_loop().call_later(_DRAIN_FOR, self.close)

    # What an ``Exchange`` asks of its connection (``Carrier``)

    def pause(self) -> None:
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume(self) -> None:
        if not self.lost:
            self.transport.resume_reading()  # type: ignore[union-attr]

    def release(self, exchange: "Exchange", drain: bool) -> None:
        """``exchange`` is closed: keep this connection if its answer was read to its end
        (or, with ``drain``, can be read out quietly), else close it."""
        if exchange._error is not None or self.lost or not self.reusable:
            self.close()
        elif exchange._complete and self.pool is not None:
            self.exchange = None
            self.pool.give(self)
        elif exchange._complete:  # a one-off call's: nothing to keep it for
            self.close()
        elif drain and not exchange._paused and exchange.status:
            self.drain()
        else:
            self.close()

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None and self._draining is None:
            self.close()  # an idle connection has nothing to say
            return
        if exchange is not None:
            exchange.bytes_read += len(data)
        self._buf += data
        try:
            body = self._parse()
        except (_Malformed, ValueError, zlib.error) as exc:
            self._fail(f"the upstream sent a malformed HTTP response ({exc})")
            return
        if exchange is not None:
            if body:
                exchange._push(body)
            if self._state == _DONE:
                exchange._finish()
        elif self._state == _DONE:
            self._draining.cancel()  # type: ignore[union-attr]
            self._draining = None
            if self.reusable and self.pool is not None:
                self.pool.give(self)
            else:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._draining is not None:
            self._draining.cancel()
        exchange = self.exchange
        if exchange is None or exchange._complete:
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            exchange._finish()  # such a body ends where the connection does (unless reset)
            return
        when = "mid-response" if exchange.status else "before answering"
        exchange._lost(TransportError(f"the upstream closed the connection {when}"))

    # The response parser

    def _parse(self) -> bytes:
        """Consume what can be parsed; return the body bytes it held (decompressed)."""
        buf, pos, out = self._buf, 0, []
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    if len(buf) - pos > _HEAD_LIMIT:
                        raise _Malformed("headers too large")
                    break
                self._head(bytes(buf[pos:end]))
                pos = end + 4
            elif state in (_SIZED, _CHUNK_DATA):
                take = min(self._left, len(buf) - pos)
                if take:
                    out.append(bytes(buf[pos : pos + take]))
                    pos += take
                    self._left -= take
                if self._left:
                    break
                self._state = _DONE if state == _SIZED else _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > 1024:
                        raise _Malformed("chunk size line too long")
                    break
                size = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
                pos = end + 2
                self._left = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_END:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise _Malformed("no CRLF after a chunk")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                if end == pos:  # the blank line after the trailers (usually none)
                    self._state = _DONE
                pos = end + 2
            elif state == _UNTIL_CLOSE:
                if len(buf) > pos:
                    out.append(bytes(buf[pos:]))
                    pos = len(buf)
                break
            else:  # _DONE: anything more is not a response to anything
                if len(buf) > pos:
                    self.reusable = False
                    pos = len(buf)
                break
        del buf[:pos]
        body = b"".join(out)
        if self._inflate is not None:
            body = self._inflate.decompress(body)
            if self._state == _DONE:
                body += self._inflate.flush()
        return body

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise _Malformed(f"status line {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200:
            return  # an interim answer: the real one follows
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _Malformed(f"header line {line[:80]!r}")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        exchange = self.exchange
        if exchange is not None:
            exchange.status, exchange.reason, exchange.headers = status, reason, headers
            exchange._answered()
        self.reusable = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        encoding = headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else 0)
        if status in (204, 304) or (exchange is not None and exchange.method == "HEAD"):
            self._state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            self._left = int(headers["content-length"])
            self._state = _SIZED if self._left else _DONE
        else:
            self._state, self.reusable = _UNTIL_CLOSE, False

    def _fail(self, reason: str) -> None:
        exchange = self.exchange
        self.close()
        if exchange is not None:
            exchange._lost(TransportError(reason))


class Exchange:
    """One upstream request and its streamed response. Used as::

    exchange = await open_stream("POST", url, headers, body, Timeouts())
    exchange.status, exchange.headers["content-type"]   # header names in lower case
    async for chunk in exchange: ...
    exchange.close()   # at any time: the socket is closed at once
    """

    def __init__(self, conn: Carrier, method: str, timeouts: Timeouts) -> None:
        global _open
        _open += 1
        loop = asyncio.get_running_loop()
        self.method = method
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.bytes_read = 0
        self.closed = False
        self._loop = loop
        self._conn = conn
        self._timeouts = timeouts
        self._head: asyncio.Future[None] = loop.create_future()
        self._chunks: collections.deque[object] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._paused = False
        self._error: TransportError | None = None
        self._complete = False  # the response was read to its end
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_data = loop.time()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"status={self.status or 'pending'}"
        return f"<Exchange {state} read={self.bytes_read}B queued={len(self._chunks)}>"

    # Consumer side

    async def wait_head(self) -> None:
        timer = self._loop.call_later(self._timeouts.headers, self._headers_late)
        try:
            await self._head
        except BaseException:  # cancelled, or dropped with its loop: nobody else owns it yet
            self.close()
            raise
        finally:
            timer.cancel()
        if self.status == 0:
            self.close()
            error = self._error or TransportError("the upstream closed before answering")
            error.unanswered = self.bytes_read == 0 and not error.timeout
            raise error

    def __aiter__(self) -> "Exchange":
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            self._wake = self._loop.create_future()
            if self._watchdog is None:
                self._watchdog = self._loop.call_later(self._timeouts.idle, self._check_idle)
            await self._wake
        item = self._chunks.popleft()
        if self._paused and len(self._chunks) < _QUEUE_DEPTH:
            self._paused = False
            if not self.closed:
                self._conn.resume()
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

    def close(self, drain: bool = False) -> None:
        """Close the upstream socket now (safe to call more than once). A finished response
        keeps its connection; with ``drain`` (the caller saw the answer's last event) one not
        at its end yet is read out in the background and kept too."""
        if self.closed:
            return
        global _open
        _open -= 1
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._conn.exchange is self:
            self._conn.release(self, drain)
        self._push(_END)
        self._answered()

    # Producer side: called by the connection

    def _push(self, item: object) -> None:
        self._chunks.append(item)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        self._last_data = self._loop.time()
        if len(self._chunks) >= _QUEUE_DEPTH and not self._paused and not self.closed:
            self._paused = True
            self._conn.pause()

    def _finish(self) -> None:
        self._complete = True
        self._push(_END)

    def _lost(self, error: TransportError) -> None:
        if not self.closed and self._error is None:
            self._error = error
        self._push(_END)
        self._answered()

    def _answered(self) -> None:
        if not self._head.done():
            self._head.set_result(None)

    def _headers_late(self) -> None:
        if not self._head.done():
            self._error = TransportError(
                f"no response headers within {self._timeouts.headers:g} s", timeout=True
            )
            self._conn.close()
            self._answered()

    def _check_idle(self) -> None:
        """One timer per silence, not one per chunk: re-armed for what is left of it."""
        self._watchdog = None
        if self.closed or self._complete:
            return
        quiet = self._loop.time() - self._last_data
        idle = self._timeouts.idle
        if quiet < idle:
            self._watchdog = self._loop.call_later(idle - quiet, self._check_idle)
            return
        self._lost(TransportError(f"the upstream sent nothing for {idle:g} s", timeout=True))
        self._conn.close()


class ConnectionPool:
    """Idle upstream connections kept for the next request, per (scheme, host, port, route):
    at most ``idle_max`` per key, each for ``idle_for`` seconds. A transport owns one and
    closes it with itself; a connection belongs to the event loop that made it."""

    def __init__(self, idle_for: float = _IDLE_FOR, idle_max: int = _IDLE_MAX) -> None:
        self.idle_for = idle_for
        self.idle_max = idle_max
        self.closed = False
        self._idle: dict[Key, list[tuple[_Connection, float]]] = {}
        self._made: weakref.WeakSet[_Connection] = weakref.WeakSet()  # every one it lent

    def __repr__(self) -> str:
        return f"<ConnectionPool idle={sum(map(len, self._idle.values()))}>"

    def take(self, key: Key) -> _Connection | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn, since = conns.pop()
            if not conn.lost and now - since < self.idle_for:
                return conn
            conn.close()
        return None

    def give(self, conn: _Connection) -> None:
        # A connection that ends its drain after its transport closed is not kept: nobody
        # would close it, and the socket would be left to the garbage collector.
        conns = self._idle.setdefault(conn.key, [])
        if conn.lost or self.closed or len(conns) >= self.idle_max:
            conn.close()
        else:
            conns.append((conn, time.monotonic()))

    def lend(self, conn: _Connection) -> None:
        """``conn`` was made for this pool: it is closed with the pool unless in use."""
        self._made.add(conn)

    def close(self) -> None:
        """Close every connection that is idle or draining (one in use is its exchange's to
        close): none is left to the garbage collector."""
        self.closed = True
        self._idle = {}
        for conn in list(self._made):
            if conn.transport is not None and not conn.lost and conn.exchange is None:
                conn.close()


_ssl_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


async def open_stream(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeouts: Timeouts,
    proxy: Proxy | None = None,
    pool: ConnectionPool | None = None,
) -> Exchange:
    """Send a request (through ``proxy`` when given) and return once the response headers
    arrived. With a ``pool`` a kept connection is used and the answered one kept; without
    (a one-off call: an image, the captcha sidecar) the connection is closed after."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    key = (parts.scheme, parts.hostname or "", parts.port or (443 if https else 80), proxy)
    raw = _request_bytes(method, parts.path or "/", parts.query, parts.netloc, headers, body)
    conn = pool.take(key) if pool is not None else None
    if conn is not None:
        try:
            return await _exchange(conn, method, raw, timeouts)
        except TransportError as exc:
            if not exc.unanswered:
                raise  # a kept connection that answered something: a real failure
    return await _exchange(await _connect(key, timeouts, pool), method, raw, timeouts)


def _request_bytes(
    method: str, path: str, query: str, host: str, headers: dict[str, str], body: bytes | None
) -> bytes:
    lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if "Accept-Encoding" not in headers:
        lines.append("Accept-Encoding: gzip")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines)
    breaks = len(lines) - 1
    if head.count("\n") != breaks or head.count("\r") != breaks:  # no header of its own
        raise ValueError("a request header holds a line break")
    return head.encode("latin-1") + b"\r\n\r\n" + (body or b"")


async def _connect(key: Key, timeouts: Timeouts, pool: ConnectionPool | None) -> _Connection:
    scheme, host, port, proxy = key
    tls = _tls() if scheme == "https" else None
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    where = f"{host}:{port}" if proxy is None else f"{host}:{port} through {proxy.label}"
    tunnel = _Tunnel()
    try:
        if proxy is None:
            connecting = loop.create_connection(
                lambda: _Connection(key, pool),
                host,
                port,
                ssl=tls,
                server_hostname=host if tls else None,
            )
        else:
            connecting = _through(proxy, key, tls, tunnel, pool)
        _, conn = await asyncio.wait_for(connecting, timeouts.connect)
    except (OSError, TimeoutError, _ProxyRefused) as exc:
        timed_out = isinstance(exc, TimeoutError) or time.monotonic() - started >= timeouts.connect
        blame = proxy is not None and not tunnel.open and not getattr(exc, "beyond", False)
        raise TransportError(
            f"cannot connect to {where}: {exc or 'timeout'}", timeout=timed_out, proxy=blame
        ) from None
    return conn


# Tunnels through an egress proxy: the handshake runs on the bare socket, then the socket is
# handed to the event loop (with TLS for https) exactly as a direct connection would be.


class _ProxyRefused(Exception):
    """The proxy answered, but would not open the tunnel (the text is safe to show);
    ``beyond``: because it could not reach the upstream (the proxy itself works)."""

    def __init__(self, reason: str, beyond: bool = False) -> None:
        super().__init__(reason)
        self.beyond = beyond


@dataclass(slots=True)
class _Tunnel:
    open: bool = False  # the proxy's part is done: what fails after is the upstream's


# SOCKS5 replies that say the proxy works but the upstream is out of its reach (RFC 1928 6).
_SOCKS_BEYOND = {3, 4, 5, 6}


# SOCKS5 reply codes (RFC 1928 section 6) in words, for both transports' messages.
SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by the proxy's rules",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused by the destination",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


async def _through(
    proxy: Proxy,
    key: Key,
    tls: ssl.SSLContext | None,
    tunnel: _Tunnel,
    pool: ConnectionPool | None,
) -> tuple[asyncio.Transport, _Connection]:
    loop = asyncio.get_running_loop()
    _, host, port, _ = key
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve the proxy {proxy.label}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        if proxy.scheme == "http":
            await _connect_tunnel(loop, sock, proxy, host, port)
        else:
            await _socks5_tunnel(loop, sock, proxy, host, port)
        tunnel.open = True
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return await loop.create_connection(
            lambda: _Connection(key, pool),
            sock=sock,
            ssl=tls,
            server_hostname=host if tls else None,
        )
    except BaseException:
        sock.close()
        raise


async def _connect_tunnel(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy, host: str, port: int
) -> None:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username or proxy.password:
        pair = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {pair}")
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    answer = bytearray()
    while b"\r\n\r\n" not in answer:  # the target says nothing before we do: no over-read
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise _ProxyRefused("the proxy closed the connection before opening the tunnel")
        answer += data
        if len(answer) > 16384:
            raise _ProxyRefused("the proxy's answer to CONNECT is too long")
    status = bytes(answer).split(b"\r\n", 1)[0].decode("latin-1")
    code = status.split(" ", 2)[1] if status.count(" ") else ""
    if not code.startswith("2"):
        why = " (it wants other credentials)" if code in ("401", "407") else ""
        # 5xx: it tried the upstream and could not reach it (tinyproxy: 500, others 502/504)
        raise _ProxyRefused(
            f"the proxy refused the tunnel: {status[:80]!r}{why}", beyond=code.startswith("5")
        )
    if not answer.endswith(b"\r\n\r\n"):
        raise _ProxyRefused("the proxy sent bytes after its answer to CONNECT")


async def _socks5_tunnel(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy, host: str, port: int
) -> None:
    login = bool(proxy.username or proxy.password)
    await loop.sock_sendall(sock, b"\x05\x02\x00\x02" if login else b"\x05\x01\x00")
    version, method = await _recv_exactly(loop, sock, 2)
    if version != 5 or method == 0xFF:
        raise _ProxyRefused("the SOCKS5 proxy accepts none of our authentication methods")
    if method == 2:
        user, password = proxy.username.encode(), proxy.password.encode()
        if len(user) > 255 or len(password) > 255:
            raise _ProxyRefused("SOCKS5 credentials are longer than 255 bytes")
        await loop.sock_sendall(
            sock, bytes([1, len(user)]) + user + bytes([len(password)]) + password
        )
        if (await _recv_exactly(loop, sock, 2))[1] != 0:
            raise _ProxyRefused("the SOCKS5 proxy rejected the credentials")
    elif method != 0:
        raise _ProxyRefused(f"the SOCKS5 proxy chose an unknown method {method}")
    try:
        ip = ipaddress.ip_address(host)
        address = bytes([1 if ip.version == 4 else 4]) + ip.packed
    except ValueError:
        name = host.encode("idna")
        address = bytes([3, len(name)]) + name
    await loop.sock_sendall(sock, b"\x05\x01\x00" + address + struct.pack(">H", port))
    _, reply, _, kind = await _recv_exactly(loop, sock, 4)
    if reply != 0:
        why = SOCKS_REPLIES.get(reply, f"reply {reply}")
        raise _ProxyRefused(
            f"the SOCKS5 proxy could not connect: {why}", beyond=reply in _SOCKS_BEYOND
        )
    size = {1: 4, 4: 16}.get(kind)
    if size is None:
        size = (await _recv_exactly(loop, sock, 1))[0]
    await _recv_exactly(loop, sock, size + 2)  # the address it bound: of no use here


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = await loop.sock_recv(sock, n - len(data))
        if not more:
            raise _ProxyRefused("the SOCKS5 proxy closed the connection during the handshake")
        data += more
    return data


class Transport(Protocol):
    """What carries upstream calls: this module's ``NativeTransport`` or, for a browser's
    TLS fingerprint, ``server.impersonate.Impersonator``."""

    async def open_stream(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        proxy: Proxy | None = None,
    ) -> Exchange: ...

    async def close(self) -> None: ...


class NativeTransport:
    """``open_stream`` of this module as a ``Transport``, with its own ``ConnectionPool``
    (made in the event loop that uses it; closed with it)."""

    def __init__(self, idle_for: float = _IDLE_FOR, idle_max: int = _IDLE_MAX) -> None:
        self.pool = ConnectionPool(idle_for, idle_max)

    def __repr__(self) -> str:
        return f"<NativeTransport {self.pool!r}>"

    async def open_stream(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        proxy: Proxy | None = None,
    ) -> Exchange:
        return await open_stream(method, url, headers, body, timeouts, proxy, self.pool)

    async def close(self) -> None:
        self.pool.close()


async def _exchange(conn: _Connection, method: str, raw: bytes, timeouts: Timeouts) -> Exchange:
    exchange = Exchange(conn, method, timeouts)
    if conn.lost or conn.transport is None or conn.transport.is_closing():
        exchange.close()
        raise TransportError("the upstream connection closed before sending", unanswered=True)
    conn.send(exchange, raw)
    await exchange.wait_head()
    return exchange
