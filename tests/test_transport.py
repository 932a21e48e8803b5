"""Both upstream transports (native and impersonate) against a raw socket server that
answers with exact bytes.

Every framing the upstream (or a proxy in front of it) may use reaches the caller as the same
body: sized, chunked (with extensions and trailers), until-close, gzip; split at any byte.
What is not HTTP fails cleanly; kept-alive connections are reused only when the previous
response was read to its end, or drained after the caller saw its last event; a slow reader
pauses the socket; closing an exchange closes the upstream connection at once.
"""

import asyncio
import gzip

import pytest

from server.transport import NativeTransport, Timeouts, TransportError

BODY = b'data: {"type":"chat:completion","data":{"phase":"answer","delta_content":"hi"}}\n\n' * 3


def chunked(body: bytes, size: int = 50, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in parts)
    return out + b"0\r\n" + trailer + b"\r\n"


def head(*lines: str) -> bytes:
    return ("HTTP/1.1 200 OK\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode()


class RawServer:
    """Answers each request with the next canned response, written in pieces of ``split``."""

    def __init__(self, *responses: bytes, split: int = 0, close_after: bool = False) -> None:
        self.responses = list(responses)
        self.split = split
        self.close_after = close_after
        self.connections = 0
        self.closed = 0  # connections the client closed (or that ended)
        self.requests: list[bytes] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in request.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.requests.append(request + await reader.readexactly(length))
                if not self.responses:
                    continue  # nothing more to say: no answer
                answer = self.responses.pop(0)
                step = self.split or len(answer)
                for i in range(0, len(answer), step):
                    writer.write(answer[i : i + step])
                    await writer.drain()
                    if self.split:
                        await asyncio.sleep(0.001)
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def fetch(
    open_stream, base: str, path: str = "/x", body: bytes | None = b"{}"
) -> tuple[int, dict, bytes]:
    exchange = await open_stream(
        "POST", base + path, {"Content-Type": "application/json"}, body, Timeouts(1, 1, 1)
    )
    try:
        return exchange.status, exchange.headers, await exchange.read_all()
    finally:
        exchange.close()


FRAMINGS = {
    "sized": head(f"Content-Length: {len(BODY)}") + BODY,
    "chunked": head("Transfer-Encoding: chunked") + chunked(BODY),
    "chunked with extensions and trailers": head("Transfer-Encoding: chunked")
    + chunked(BODY, 7, b";ext=1", b"X-Checksum: abc\r\n"),
    "gzip chunked": head("Transfer-Encoding: chunked", "Content-Encoding: gzip")
    + chunked(gzip.compress(BODY), 16),
    "until close": head("Connection: close") + BODY,
    "after 100 Continue": b"HTTP/1.1 100 Continue\r\n\r\n"
    + head(f"Content-Length: {len(BODY)}")
    + BODY,
}


@pytest.mark.parametrize("split", [0, 1, 13])
@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_every_framing_gives_the_same_body(transport, framing, split):
    until_close = framing == "until close"
    server = RawServer(*[FRAMINGS[framing]] * 2, split=split, close_after=until_close)
    base = await server.start()
    try:
        status, headers, body = await fetch(transport.open_stream, base)
        assert (status, body) == (200, BODY)
        assert (await fetch(transport.open_stream, base))[2] == BODY
    finally:
        await server.close()
    assert server.connections == (2 if until_close else 1)  # kept alive where HTTP allows
    assert all(name == name.lower() for name in headers)
    request = server.requests[0]
    assert request.startswith(b"POST /x HTTP/1.1\r\n") and request.endswith(b"\r\n\r\n{}")
    assert f"Host: {base[7:]}".encode() in request and b"Content-Length: 2" in request


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "malformed"),
        (head("Transfer-Encoding: chunked") + b"zz\r\nhello\r\n", "malformed"),
        (head("Transfer-Encoding: chunked") + b"5\r\nhelloXX0\r\n\r\n", "malformed"),
        (head("Content-Encoding: gzip", "Content-Length: 9") + b"not gzip!", "malformed"),
        (head("Content-Length: 100") + b"short", "closed the connection mid-response"),
        (b"", "closed the connection before answering"),
    ],
)
async def test_what_is_not_http_fails_cleanly(transport, answer, words, exchanges):
    server = RawServer(answer, close_after=True)
    base = await server.start()
    try:
        with pytest.raises(TransportError, match=words):
            await fetch(transport.open_stream, base)
    finally:
        await server.close()
    await asyncio.sleep(0)
    assert exchanges.left_open() == 0


async def test_no_headers_in_time_is_a_timeout(transport):
    server = RawServer()  # reads the request, never answers
    base = await server.start()
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(TransportError, match=r"no response headers within 0\.2 s") as info:
            exchange = await transport.open_stream("GET", base, {}, None, Timeouts(0.3, 0.2, 1))
            exchange.close()
    finally:
        await server.close()
    assert info.value.timeout and asyncio.get_running_loop().time() - started < 0.5


async def test_a_header_value_cannot_smuggle_a_header(transport):
    with pytest.raises(ValueError, match="line break"):
        await transport.open_stream(
            "GET", "http://127.0.0.1:9/", {"X-A": "1\r\nX-B: 2"}, None, Timeouts()
        )


async def test_connections_are_reused_only_after_a_whole_response(transport):
    open_stream = transport.open_stream
    sized = FRAMINGS["sized"]
    server = RawServer(sized, FRAMINGS["chunked"], head("Content-Length: 1000") + BODY)
    base = await server.start()
    try:
        for _ in range(2):
            assert (await fetch(open_stream, base))[2] == BODY
        assert server.connections == 1
        exchange = await open_stream("POST", base + "/x", {}, b"{}", Timeouts(1, 1, 1))
        exchange.close()  # abandoned before its end: this socket is not reused
        server.responses.append(sized)
        assert (await fetch(open_stream, base))[2] == BODY
        assert server.connections == 2
    finally:
        await server.close()


async def test_an_answer_left_after_its_last_event_is_drained_and_its_connection_kept(
    transport,
):
    server = RawServer(FRAMINGS["chunked"], FRAMINGS["chunked"], split=40)
    base = await server.start()
    try:
        exchange = await transport.open_stream("POST", base + "/x", {}, b"{}", Timeouts(1, 1, 1))
        first = await exchange.__anext__()
        assert first and len(first) < len(BODY)
        exchange.close(drain=True)  # the caller saw what it needed; the rest is read quietly
        await asyncio.sleep(0.2)
        assert (await fetch(transport.open_stream, base))[2] == BODY
        assert server.connections == 1
    finally:
        await server.close()


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing(transport):
    big = bytes(range(256)) * 4096  # 1 MiB
    server = RawServer(head("Transfer-Encoding: chunked") + chunked(big, 4096), split=65536)
    base = await server.start()
    try:
        exchange = await transport.open_stream("POST", base + "/x", {}, b"{}", Timeouts(1, 1, 5))
        await asyncio.sleep(0.3)  # the caller is busy: the upstream's bytes wait in the kernel
        assert exchange.bytes_read < len(big) // 2
        got = await exchange.read_all(2 << 20)
        exchange.close()
    finally:
        await server.close()
    assert got == big


async def test_closing_the_transport_closes_its_idle_and_draining_connections(exchanges):
    # Nothing is left for the garbage collector (a socket it finds is a ResourceWarning at
    # a random later point): a kept connection and one still draining close with the pool.
    unfinished = head("Transfer-Encoding: chunked") + b"5\r\nhello\r\n"  # no last chunk
    server = RawServer(unfinished, FRAMINGS["sized"])
    base = await server.start()
    native = NativeTransport()
    try:
        draining = await native.open_stream("POST", base + "/y", {}, b"{}", Timeouts(1, 1, 5))
        assert await draining.__anext__() == b"hello"
        draining.close(drain=True)  # the rest would be read quietly, up to 2 s
        assert (await fetch(native.open_stream, base))[2] == BODY  # a second one, kept idle
        assert server.connections == 2 and server.closed == 0
        await native.close()
        for _ in range(50):
            if server.closed == 2:
                break
            await asyncio.sleep(0.02)
        assert server.closed == 2 and exchanges.left_open() == 0
    finally:
        await server.close()
