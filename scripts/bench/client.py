"""The load generator: raw HTTP/1.1 over asyncio, keep-alive, timestamps per request.

Owns ``Connection`` (one kept-alive client connection; ``request()`` sends raw bytes and
returns a ``Result`` with the send time, the first response byte, the first body byte and the
end), ``closed_loop`` (N connections, each sending its next request as soon as the last one
ended, counted over a measuring window after a warm-up; the request is fixed bytes or a
function called for each one, so a client can pay for building it) and ``open_streams`` (N requests,
each on its own connection, started over a ramp and held open together). Responses are
parsed as they arrive (Content-Length, chunked, or close-delimited) and never kept whole:
only the first and last bytes are kept, to check the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Check", "Connection", "Phase", "Result", "closed_loop", "open_streams", "percentile"]

_KEEP = 96  # bytes kept from each end of a body, to check what it was

Raw = bytes | Callable[[], bytes]  # one request's bytes, or what builds each request anew


def _bytes(raw: Raw) -> bytes:
    return raw if isinstance(raw, bytes) else raw()


@dataclass(slots=True)
class Result:
    sent: float
    status: int = 0
    first_byte: float = 0.0  # the first byte of the response (status line)
    first_data: float = 0.0  # the first byte of the body
    end: float = 0.0
    size: int = 0
    head: bytes = b""
    tail: bytes = b""
    error: str = ""
    ok: bool = False

    @property
    def ttfb(self) -> float:
        return self.first_byte - self.sent

    @property
    def latency(self) -> float:
        return self.end - self.sent


class _Protocol(asyncio.Protocol):
    """Parses one response at a time; the connection is unusable after an error."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.result: Result | None = None
        self.done: asyncio.Future[Result] | None = None
        self.state = "idle"
        self.remaining = 0  # body bytes left (content-length) or in this chunk
        self.keep_alive = True
        self.gauge: list[int] | None = None  # [open, most open], shared by open_streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.result is not None and self.state == "until-close":
            self._finish()
        elif self.result is not None:
            self._fail(f"connection closed ({self.state})")

    def start(self, raw: bytes) -> asyncio.Future[Result]:
        assert self.transport is not None and self.result is None
        self.result = Result(sent=time.monotonic())
        self.done = asyncio.get_running_loop().create_future()
        self.state = "head"
        self.transport.write(raw)
        return self.done

    def data_received(self, data: bytes) -> None:
        result = self.result
        if result is None:
            return
        if not result.first_byte:
            result.first_byte = time.monotonic()
            if self.gauge is not None:
                self.gauge[0] += 1
                self.gauge[1] = max(self.gauge[1], self.gauge[0])
        self.buf += data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(f"bad response: {exc}")

    def _body(self, data: bytes) -> None:
        result = self.result
        assert result is not None
        if not result.first_data:
            result.first_data = time.monotonic()
        if len(result.head) < _KEEP:
            result.head += data[: _KEEP - len(result.head)]
        result.tail = (result.tail + data)[-_KEEP:]
        result.size += len(data)

    def _parse(self) -> None:
        buf = self.buf
        while self.result is not None:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                self.result.status = int(lines[0].split(b" ", 2)[1])
                length, chunked, self.keep_alive = -1, False, True
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name, value = name.strip().lower(), value.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        chunked = b"chunked" in value
                    elif name == b"connection":
                        self.keep_alive = value != b"close"
                if chunked:
                    self.state = "size"
                elif length >= 0:
                    self.state, self.remaining = "fixed", length
                else:
                    self.state, self.keep_alive = "until-close", False
            elif self.state == "fixed":
                take = min(self.remaining, len(buf))
                if take:
                    self._body(bytes(buf[:take]))
                    del buf[:take]
                    self.remaining -= take
                if self.remaining:
                    return
                self._finish()
            elif self.state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self.state, self.remaining = ("trailer", 0) if size == 0 else ("chunk", size)
            elif self.state == "chunk":
                if len(buf) < self.remaining + 2:
                    return
                self._body(bytes(buf[: self.remaining]))
                del buf[: self.remaining + 2]
                self.state = "size"
            elif self.state == "trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish()
            elif self.state == "until-close":
                if buf:
                    self._body(bytes(buf))
                    buf.clear()
                return

    def _ended(self, result: Result) -> None:
        if self.gauge is not None and result.first_byte:
            self.gauge[0] -= 1

    def _finish(self) -> None:
        result, done = self.result, self.done
        assert result is not None and done is not None
        self._ended(result)
        result.end = time.monotonic()
        self.result, self.done, self.state = None, None, "idle"
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
            self.closed = True
        if not done.done():
            done.set_result(result)

    def _fail(self, why: str) -> None:
        result, done = self.result, self.done
        self.result, self.done = None, None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if result is not None:
            self._ended(result)
        if result is not None and done is not None and not done.done():
            result.end, result.error = time.monotonic(), why
            done.set_result(result)


class Connection:
    """One client connection, kept alive between requests.

    >>> conn = await Connection.open("127.0.0.1", 8080)
    >>> result = await conn.request(raw_request_bytes)
    >>> result.status, result.ttfb, conn.closed
    """

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    def __repr__(self) -> str:
        return f"<Connection {self._protocol.state} closed={self.closed}>"

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        _, protocol = await asyncio.get_running_loop().create_connection(_Protocol, host, port)
        return cls(protocol)

    @property
    def closed(self) -> bool:
        return self._protocol.closed

    async def request(self, raw: bytes, timeout: float = 60.0) -> Result:
        if self.closed:
            raise ConnectionError("request on a closed connection")
        done = self._protocol.start(raw)
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            self._protocol._fail(f"no complete answer within {timeout:g} s")
            return done.result()

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol.closed = True


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


@dataclass
class Phase:
    """What one measured run saw: results inside the window, and what went wrong anywhere."""

    concurrency: int
    window: float  # seconds
    results: list[Result] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    late: int = 0  # requests still unanswered when the phase gave up on them
    peak_open: int = 0  # open_streams: most responses begun and not ended at one time

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]

    @property
    def rate(self) -> float:
        return len(self.ok) / self.window if self.window else 0.0

    def count_failure(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


Check = Callable[[Result], bool]


def _judge(result: Result, check: Check, phase: Phase) -> None:
    if result.error:
        phase.count_failure(result.error.split(" (")[0])
    elif result.status != 200:
        phase.count_failure(f"HTTP {result.status}")
    elif not check(result):
        phase.count_failure("unexpected body")
    else:
        result.ok = True


async def closed_loop(
    host: str,
    port: int,
    raw: Raw,
    check: Check,
    concurrency: int,
    warmup: float,
    window: float,
    on_window: Callable[[str], None] = lambda _: None,
    timeout: float = 60.0,
    stagger: float = 0.0,
) -> Phase:
    """``concurrency`` connections send back to back for ``warmup + window`` seconds.
    Results that END inside the window count; ``on_window("start"/"end")`` is called at its
    edges (to read CPU time and Redis counters there). Requests in flight when the window
    closes are awaited (up to ``timeout``) but not counted. ``stagger`` spreads the first
    requests over that many seconds, so that equally long (paced) answers do not keep all
    connections in lockstep."""
    loop = asyncio.get_running_loop()
    phase = Phase(concurrency, window)
    begin = loop.time() + warmup
    end = begin + window
    loop.call_at(begin, on_window, "start")
    loop.call_at(end, on_window, "end")

    async def one(index: int) -> None:
        conn: Connection | None = None
        await asyncio.sleep(stagger * index / concurrency)
        try:
            while loop.time() < end:
                if conn is None or conn.closed:
                    try:
                        conn = await Connection.open(host, port)
                    except OSError as exc:
                        phase.count_failure(f"connect: {exc.strerror or exc}")
                        await asyncio.sleep(0.05)
                        continue
                result = await conn.request(_bytes(raw), timeout)
                _judge(result, check, phase)
                if begin <= result.end <= end:
                    phase.results.append(result)
        finally:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(one(i) for i in range(concurrency)))
    return phase


async def open_streams(
    host: str,
    port: int,
    raw: Raw,
    check: Check,
    count: int,
    ramp: float,
    sample: Callable[[int], None],
    timeout: float,
) -> Phase:
    """``count`` requests, each on a new connection, started evenly over ``ramp`` seconds and
    left to run to their end. ``sample(open_now)`` is called every 100 ms with how many
    responses have begun and not yet ended; ``Phase.peak_open`` is the exact most at once."""
    loop = asyncio.get_running_loop()
    phase = Phase(count, 0.0)
    gauge = [0, 0]
    started = loop.time()

    async def one(index: int) -> None:
        await asyncio.sleep(ramp * index / count)
        try:
            conn = await Connection.open(host, port)
        except OSError as exc:
            phase.count_failure(f"connect: {exc.strerror or exc}")
            return
        conn._protocol.gauge = gauge
        try:
            result = await conn.request(_bytes(raw), timeout)
        finally:
            conn.close()
        if result.error.startswith("no complete answer"):
            phase.late += 1
        _judge(result, check, phase)
        phase.results.append(result)

    async def sampler() -> None:
        while True:
            sample(gauge[0])
            await asyncio.sleep(0.1)

    ticking = asyncio.ensure_future(sampler())
    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
    phase.window = loop.time() - started
    phase.peak_open = gauge[1]
    return phase
