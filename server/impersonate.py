"""Upstream calls that look like Chrome's on the wire (``UPSTREAM_TRANSPORT=impersonate``).

Owns ``Impersonator``: the same ``open_stream`` as ``server/transport.py`` (same arguments, the
same ``Exchange`` back, the same ``TransportError`` kinds), carried by curl_cffi's libcurl
build, which sends a current Chrome's TLS ClientHello and HTTP/2 settings and frame order
(``UPSTREAM_IMPERSONATE``, e.g. ``chrome152``), where Python's ``ssl`` is a fingerprint the
upstream's WAF blocks on sight (PROTOCOL.md section 6.3). Only the wire changes: the headers
sent are exactly the dialect's (curl's own browser defaults are off), so both transports send
the same request. It drives libcurl's multi interface on the running event loop (curl_cffi's
``AsyncCurl``: sockets are watched by the loop, nothing blocks it); the multi handle's
connection cache keeps connections alive (and multiplexes HTTP/2), per egress proxy, so a
route's connections never serve another route. The body reaches the consumer one libcurl
write at a time with backpressure (a transfer pauses while a few chunks wait); the connect,
response-headers (from when the request went out, as libcurl's pre-transfer time says) and
idle timeouts are the native ones; ``close()`` aborts a transfer at once (the
connection closed, or its HTTP/2 stream reset), and an answer the caller leaves after its last
event is read out in the background so its connection is kept. curl_cffi is an optional extra
(``pip install 'zai-gateway[impersonate]'``); this module imports it, so import it only when
the setting asks for it.
"""

import asyncio
import re
from urllib.parse import urlsplit

from curl_cffi import AsyncCurl, Curl, CurlError, CurlHttpVersion, CurlInfo, CurlOpt
from curl_cffi.curl import CURL_WRITEFUNC_PAUSE, CURLPAUSE_CONT

from server.transport import SOCKS_REPLIES, Exchange, Proxy, Timeouts, TransportError

__all__ = ["Impersonator"]

_CONNECT_POLL = 0.05  # seconds between looks at a transfer still connecting
_DRAIN_FOR = 2.0  # seconds an abandoned, finished answer may take to reach its end
_IDLE_FOR = 30  # seconds an idle upstream connection is kept (as the native pool)
_SPARE = 64  # easy handles kept for reuse
_ENCODINGS = "gzip, deflate, br, zstd"  # what Chrome accepts (libcurl decodes them)
_CURL_TEXT = re.compile(r"curl: \(\d+\) (.*?)(?:\. See https?://\S+.*)?$", re.S)

# libcurl's result codes, sorted the way the native transport words its failures.
_MALFORMED = {1, 8, 61}  # UNSUPPORTED_PROTOCOL (not HTTP), WEIRD_SERVER_REPLY, BAD_CONTENT_ENCODING
_TIMED_OUT = 28
# Before the request went out, these are the upstream's (its name, its TLS), not the proxy's.
_UPSTREAM_TLS = {6, 35, 58, 59, 60, 83, 90, 91}
# CURLINFO_PROXY_ERROR (CURLPX_*) in the native transport's words: the SOCKS5 login, and the
# proxy's replies (CURLPX_REPLY_* -> RFC 1928 reply code).
_SOCKS_LOGIN = {
    12: "the SOCKS5 proxy accepts none of our authentication methods",  # CURLPX_NO_AUTH
    33: "the SOCKS5 proxy rejected the credentials",  # CURLPX_USER_REJECTED
}
_SOCKS_REPLY = {20: 1, 23: 2, 22: 3, 21: 4, 19: 5, 24: 6, 18: 7, 17: 8}
_BEYOND = {3, 4, 5, 6}  # replies saying the proxy works but the upstream is out of its reach


class _Transfer:
    """One libcurl transfer carrying one ``Exchange`` (a ``server.transport.Carrier``:
    ``pause``, ``resume``, ``release``, ``close``), fed by libcurl's header and body
    callbacks, which run on the loop inside ``AsyncCurl``'s socket handling."""

    def __init__(self, owner: "Impersonator", curl: Curl, proxy: Proxy | None, where: str) -> None:
        self.owner = owner
        self.curl = curl
        self.proxy = proxy
        self.where = where  # host:port, for messages
        self.started = asyncio.get_running_loop().time()
        self.exchange: Exchange | None = None
        self.lost = False  # the transfer is over (done, failed, aborted)
        self.reusable = True
        self.future: asyncio.Future[None] | None = None
        self._hold = False  # the consumer is behind: pause at the next write
        self._held = False  # libcurl holds a write back for us
        self._drain: asyncio.TimerHandle | None = None
        self._head: list[bytes] = []

    def __repr__(self) -> str:
        state = "over" if self.lost else "held" if self._held else "running"
        return f"<Transfer {state} via {self.proxy.label if self.proxy else 'direct'}>"

    # libcurl's callbacks

    def on_header(self, line: bytes) -> int:
        if line.startswith(b"HTTP/"):  # a status line begins a head (again after a 1xx)
            self._head = [line]
        elif line.strip():
            self._head.append(line)
        elif self._head:
            self._answered(self._head)
            self._head = []
        return len(line)

    def on_body(self, data: bytes) -> int:
        if self._hold:
            self._held = True
            return CURL_WRITEFUNC_PAUSE  # libcurl keeps ``data`` and hands it over on resume
        exchange = self.exchange
        if exchange is not None:
            exchange.bytes_read += len(data)
            exchange._push(data)
        return len(data)

    def _answered(self, head: list[bytes]) -> None:
        status_line = head[0].decode("latin-1").strip()
        _, code, reason = [*status_line.split(" ", 2), "", ""][:3]
        if not code.isdigit() or 100 <= int(code) < 200:
            return  # an interim answer: the real one follows
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        exchange = self.exchange
        if exchange is not None:
            exchange.status, exchange.reason, exchange.headers = int(code), reason, headers
            exchange._answered()

    # What the exchange asks

    def pause(self) -> None:
        self._hold = True

    def resume(self) -> None:
        self._hold = False
        if self._held and not self.lost:
            self._held = False
            self.curl.pause(CURLPAUSE_CONT)  # may deliver the held write at once

    def release(self, exchange: Exchange, drain: bool) -> None:
        """``exchange`` is closed: a finished transfer is already back in libcurl's cache;
        with ``drain`` one still running is read out quietly (its connection kept)."""
        self.exchange = None
        if self.lost:
            return
        if drain and not exchange._paused and exchange.status:
            self._drain = asyncio.get_running_loop().call_later(_DRAIN_FOR, self.close)
            self.resume()
        else:
            self.close()

    def close(self) -> None:
        """Abort now: libcurl closes the connection (or resets the HTTP/2 stream)."""
        self.exchange = None
        if not self.lost:
            self.owner._abort(self)

    # The end of the transfer

    def done(self, future: asyncio.Future[None]) -> None:
        self.lost = True
        if self._drain is not None:
            self._drain.cancel()
        exchange = self.exchange
        if exchange is not None and not exchange._complete:
            error = None if future.cancelled() else future.exception()
            if future.cancelled():
                exchange._lost(TransportError("the upstream transfer was aborted"))
            elif error is None and exchange.status:
                exchange._finish()
            else:
                exchange._lost(self._failure(error, exchange))
        self.owner._finished(self)

    def _failure(self, error: BaseException | None, exchange: Exchange) -> TransportError:
        if not isinstance(error, CurlError):
            return TransportError(f"the upstream transfer failed ({error!r})")
        code = error.code or 0
        said = _CURL_TEXT.search(str(error))
        text = (said[1] if said else str(error)).strip().rstrip(".")
        if self.proxy is not None and len(self.proxy.password) >= 4:  # curl never shows it
            text = text.replace(self.proxy.password, "***")
        if code in _MALFORMED or "chunk" in text.lower():
            return TransportError(f"the upstream sent a malformed HTTP response ({text})")
        if not self.sent():
            return self._unreached(text, code)
        if code == _TIMED_OUT:
            return TransportError(f"the upstream timed out ({text})", timeout=True)
        when = "mid-response" if exchange.status else "before answering"
        return TransportError(f"the upstream closed the connection {when} ({text})")

    def _unreached(self, text: str, code: int) -> TransportError:
        """A transfer that never sent its request: the proxy's fault when one is in the way,
        unless it said the upstream is out of its reach or the upstream's TLS failed."""
        proxy, blame = self.proxy, False
        if proxy is not None:
            tunnel = int(self._info(CurlInfo.HTTP_CONNECTCODE))  # its answer to CONNECT
            socks = int(self._info(CurlInfo.PROXY_ERROR))
            reply = _SOCKS_REPLY.get(socks, 0)
            blame = not (tunnel >= 500 or reply in _BEYOND) and code not in _UPSTREAM_TLS
            if tunnel in (401, 407):
                text = f"{text} (it wants other credentials)"
            elif socks in _SOCKS_LOGIN:
                text = _SOCKS_LOGIN[socks]
            elif reply:
                text = f"the SOCKS5 proxy could not connect: {SOCKS_REPLIES[reply]}"
        where = self.where if proxy is None else f"{self.where} through {proxy.label}"
        timeout = code == _TIMED_OUT
        return TransportError(f"cannot connect to {where}: {text}", timeout=timeout, proxy=blame)

    def sent(self) -> bool:
        """Whether the request went out (CONNECT to a proxy does not count)."""
        return self._info(CurlInfo.REQUEST_SIZE) > 0

    def _info(self, what: CurlInfo) -> float:
        try:
            return self.curl.getinfo(what) or 0  # type: ignore[return-value]
        except CurlError:
            return 0


class _CurlExchange(Exchange):
    """An ``Exchange`` whose wait for the response headers starts when the request went out:
    libcurl connects (proxy, TLS) inside the transfer and says so only in its timings."""

    def __init__(self, transfer: _Transfer, method: str, timeouts: Timeouts) -> None:
        self._transfer = transfer  # before the base's own start: it may ask for it
        super().__init__(transfer, method, timeouts)

    def _headers_late(self) -> None:
        if self._head.done():
            return
        transfer = self._transfer
        spent = self._loop.time() - transfer.started
        # When the request went out (0: still connecting, bounded by the connect timeout)
        sent = transfer._info(CurlInfo.PRETRANSFER_TIME_T) / 1e6 if transfer.sent() else 0.0
        if not sent and spent < self._timeouts.connect:
            self._loop.call_later(_CONNECT_POLL, self._headers_late)  # the connect timeout
            return
        left = (sent or self._timeouts.connect) + self._timeouts.headers - spent
        if left > 0.001:
            self._loop.call_later(left, self._headers_late)
        else:
            super()._headers_late()


class Impersonator:
    """Opens upstream exchanges through libcurl with a browser's fingerprint. Used as::

    transport = Impersonator("chrome152")
    exchange = await transport.open_stream("POST", url, headers, body, Timeouts(), proxy)
    await transport.close()   # with the services: aborts what is left
    """

    def __init__(self, target: str, cafile: str = "") -> None:
        self.target = target
        self.cafile = cafile  # a CA bundle to trust instead of certifi's (tests)
        self._multi: AsyncCurl | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spare: list[Curl] = []
        self._running: set[_Transfer] = set()

    def __repr__(self) -> str:
        return f"<Impersonator {self.target} running={len(self._running)}>"

    async def open_stream(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        proxy: Proxy | None = None,
    ) -> Exchange:
        """Send a request (through ``proxy`` when given) and return once the response headers
        arrived, as ``server.transport.open_stream``."""
        if any("\r" in v or "\n" in v for v in headers.values()):
            raise ValueError("a request header holds a line break")
        multi = self._multi_handle()
        curl = self._spare.pop() if self._spare else Curl()
        transfer = _Transfer(self, curl, proxy, urlsplit(url).netloc)
        try:
            self._prepare(curl, transfer, method, url, headers, body, timeouts, proxy)
        except BaseException:
            self._give_back(curl)
            raise
        exchange = _CurlExchange(transfer, method, timeouts)
        transfer.exchange = exchange
        transfer.future = multi.add_handle(curl)
        transfer.future.add_done_callback(transfer.done)
        self._running.add(transfer)
        await exchange.wait_head()
        return exchange

    async def close(self) -> None:
        for transfer in list(self._running):
            transfer.close()
        if self._multi is not None:
            await self._multi.close()  # type: ignore[no-untyped-call]
            self._multi = None
        for curl in self._spare:
            curl.close()
        self._spare.clear()

    def _multi_handle(self) -> AsyncCurl:
        loop = asyncio.get_running_loop()
        if self._multi is None or self._loop is not loop:
            self._multi, self._loop = AsyncCurl(loop=loop), loop  # a handle is per loop
            self._spare.clear()
        return self._multi

    def _prepare(
        self,
        curl: Curl,
        transfer: _Transfer,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        proxy: Proxy | None,
    ) -> None:
        if curl.impersonate(self.target, default_headers=False):
            raise ValueError(f"curl_cffi cannot impersonate {self.target!r}")
        # After the target (it asks for HTTP/2 everywhere): HTTP/2 over TLS, as a browser;
        # plain http (a local upstream) stays HTTP/1.1 without an h2c upgrade.
        curl.setopt(CurlOpt.HTTP_VERSION, CurlHttpVersion.V2TLS)
        curl.setopt(CurlOpt.URL, url.encode())
        if method == "GET":
            curl.setopt(CurlOpt.HTTPGET, 1)
        elif method == "HEAD":
            curl.setopt(CurlOpt.NOBODY, 1)
        elif method == "POST":
            curl.setopt(CurlOpt.POST, 1)
        else:
            curl.setopt(CurlOpt.CUSTOMREQUEST, method.encode())
        if body is not None:
            curl.setopt(CurlOpt.POSTFIELDS, body)
            curl.setopt(CurlOpt.POSTFIELDSIZE, len(body))
        lines = [f"{k}: {v}".encode("latin-1") for k, v in headers.items() if k.lower() not in _OWN]
        # An empty value removes what libcurl would add on its own: the request is ours.
        lines += [b"Expect:"] + (
            [] if "content-type" in {k.lower() for k in headers} else [b"Content-Type:"]
        )
        curl.setopt(CurlOpt.HTTPHEADER, lines)
        accept = next((v for k, v in headers.items() if k.lower() == "accept-encoding"), _ENCODINGS)
        curl.setopt(CurlOpt.ACCEPT_ENCODING, accept.encode())
        curl.setopt(CurlOpt.FOLLOWLOCATION, 0)
        curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, max(1, int(timeouts.connect * 1000)))
        curl.setopt(CurlOpt.MAXAGE_CONN, _IDLE_FOR)
        curl.setopt(CurlOpt.NOSIGNAL, 1)
        curl.setopt(CurlOpt.TCP_NODELAY, 1)
        if self.cafile:
            curl.setopt(CurlOpt.CAINFO, self.cafile)
        if proxy is None:
            curl.setopt(CurlOpt.PROXY, b"")  # and no proxy from the environment either
        else:
            # socks5h: the proxy resolves the name, as the native tunnel has it do
            scheme = "socks5h" if proxy.scheme == "socks5" else "http"
            host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
            curl.setopt(CurlOpt.PROXY, f"{scheme}://{host}:{proxy.port}".encode())
            if proxy.username or proxy.password:
                curl.setopt(CurlOpt.PROXYUSERNAME, proxy.username.encode())
                curl.setopt(CurlOpt.PROXYPASSWORD, proxy.password.encode())
            if scheme == "http":
                curl.setopt(CurlOpt.HTTPPROXYTUNNEL, 1)  # CONNECT, for http upstreams too
                curl.setopt(CurlOpt.SUPPRESS_CONNECT_HEADERS, 1)
        curl.setopt(CurlOpt.HEADERFUNCTION, transfer.on_header)
        curl.setopt(CurlOpt.WRITEFUNCTION, transfer.on_body)

    def _abort(self, transfer: _Transfer) -> None:
        if self._multi is not None and transfer.future is not None:
            self._multi.remove_handle(transfer.curl)  # cancels its future: ``done`` follows

    def _finished(self, transfer: _Transfer) -> None:
        self._running.discard(transfer)
        self._give_back(transfer.curl)

    def _give_back(self, curl: Curl) -> None:
        curl.clean_handles_and_buffers()
        curl.reset()
        if len(self._spare) < _SPARE:
            self._spare.append(curl)
        else:
            curl.close()


_OWN = {"accept-encoding", "content-length", "host"}  # libcurl writes these itself
