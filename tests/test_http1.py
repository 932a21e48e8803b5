"""The gateway's own HTTP/1.1 server connection (``server.web.http1``) on real sockets.

What tornado's connection did and this one must still do, and what the test suite did not
reach through the SDKs: pipelined requests answered in order, ``Connection: close``, a kept
connection's idle timeout, HTTP/1.0 keep-alive and its close-delimited answers, chunked
request bodies, ``Expect: 100-continue``, HEAD, malformed heads (400, then closed), an
answer shorter or longer than its Content-Length (closed, not a framing error), the proxy
headers, backpressure from a client that does not read, and the drain. Raw HTTP/1.1 from
asyncio streams against an ``EdgeServer`` serving a few small handlers, and, where the
gateway's own handlers matter, against the in-process gateway.
"""

import asyncio
import contextlib
import json

import pytest
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, stream_request_body

from server.web.edge import EdgeServer
from tests.conftest import API_KEY


@stream_request_body
class Echo(RequestHandler):
    """Answers what it was sent: method, path, body, and the peer as the server sees it;
    ``?prepare=`` seconds before the body is read, ``?delay=`` seconds before the answer."""

    def initialize(self, closed: list[str]) -> None:
        self.closed = closed
        self.body = b""

    async def prepare(self) -> None:
        await asyncio.sleep(float(self.get_argument("prepare", "0")))

    def data_received(self, chunk: bytes) -> None:
        self.body += chunk

    async def get(self, *_: str) -> None:
        await asyncio.sleep(float(self.get_argument("delay", "0")))
        self.finish(
            {
                "method": self.request.method,
                "path": self.request.path,
                "body": self.body.decode(),
                "remote_ip": self.request.remote_ip,
                "protocol": self.request.protocol,
            }
        )

    post = head = get

    def on_connection_close(self) -> None:
        self.closed.append(self.request.path)


class Framing(RequestHandler):
    """Answers that break their own Content-Length, a chunked one, a 204."""

    def get(self, kind: str) -> None:
        if kind == "short":
            self.set_header("Content-Length", "10")
            self.write(b"12345")
        elif kind == "long":
            self.set_header("Content-Length", "3")
            self.write(b"1234567890")
        elif kind == "chunked":
            self.write(b"first ")
            self.flush()
            self.write(b"second")
        elif kind == "empty":
            self.set_status(204)
        self.finish()


class Flood(RequestHandler):
    """Streams 64 KiB pieces, waiting on each flush: how far it gets says if it is held back."""

    def initialize(self, sent: list[int]) -> None:
        self.sent = sent

    async def get(self) -> None:
        for _ in range(400):  # 25 MiB, far more than the socket buffers hold
            self.write(b"x" * 65536)
            await self.flush()
            self.sent[0] += 1
        self.finish()


@pytest.fixture
def edge(io_loop):
    """``start(**options)``: an ``EdgeServer`` with the handlers above; its port, the server
    and what the handlers saw (connections closed on them, flood pieces sent)."""
    servers: list[EdgeServer] = []
    del WRITERS[:]

    async def start(**options):
        closed: list[str] = []
        sent = [0]
        app = Application(
            [
                (r"/echo(/.*)?", Echo, {"closed": closed}),
                (r"/framing/(\w+)", Framing),
                (r"/flood", Flood, {"sent": sent}),
            ]
        )
        sockets = bind_sockets(0, "127.0.0.1")
        server = EdgeServer(app, **options)
        server.add_sockets(sockets)
        servers.append(server)
        return sockets[0].getsockname()[1], server, closed, sent

    yield start
    for writer in WRITERS:
        writer.transport.abort()
    for server in servers:
        server.stop()
        io_loop.run_sync(server.close_all_connections)


WRITERS: list[asyncio.StreamWriter] = []  # every client connection, closed after each test


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    WRITERS.append(writer)
    return reader, writer


async def answer(reader: asyncio.StreamReader, head: bool = False) -> tuple[int, dict, bytes]:
    """One answer: status, headers (lower-case names), body (sized, chunked or to the close)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    status = int(lines[0].split()[1])
    if head or status in (100, 204, 304):
        return status, headers, b""
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(await asyncio.wait_for(reader.readline(), 10), 16):
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readexactly(2) == b"\r\n"
    else:
        body = await asyncio.wait_for(reader.read(), 10)
    return status, headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (nothing more comes) within a few seconds."""
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), 5) == b""
    return True


async def test_pipelined_requests_are_answered_in_order(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    # Sent at once; the first is the slowest to answer, the second has a body.
    writer.write(
        b"GET /echo/1?delay=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /echo/3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    seen = [json.loads((await answer(reader))[2]) for _ in range(3)]
    assert [s["path"] for s in seen] == ["/echo/1", "/echo/2", "/echo/3"]
    assert seen[1]["body"] == "hello"
    writer.close()


async def test_http10_keeps_alive_only_when_asked(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    for _ in range(2):  # the same connection serves both
        writer.write(b"GET /echo/kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = await answer(reader)
        assert status == 200 and headers["connection"] == "Keep-Alive"
        assert json.loads(body)["path"] == "/echo/kept"
    writer.write(b"GET /echo/once HTTP/1.0\r\n\r\n")
    status, headers, _ = await answer(reader)
    assert status == 200 and "connection" not in headers
    assert await closed_by_server(reader)
    writer.close()


async def test_connection_close_is_said_back_and_done(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(b"GET /echo/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = await answer(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await closed_by_server(reader)
    writer.close()


async def test_a_kept_connection_left_idle_is_closed_after_the_idle_timeout(edge):
    port, *_ = await edge(idle_connection_timeout=0.3)
    reader, writer = await connect(port)
    writer.write(b"GET /echo/first HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await answer(reader))[0] == 200
    started = asyncio.get_running_loop().time()
    assert await closed_by_server(reader)
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()


async def test_an_http10_answer_without_a_length_ends_with_the_close(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(b"GET /framing/chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = await answer(reader)  # read to the close
    assert status == 200 and "transfer-encoding" not in headers
    assert "content-length" not in headers and headers.get("connection") != "Keep-Alive"
    assert body == b"first second"
    writer.close()


async def test_an_http11_answer_without_a_length_is_chunked_and_the_connection_kept(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(b"GET /framing/chunked HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await answer(reader)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"first second"
    writer.write(b"GET /framing/empty HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await answer(reader)
    assert status == 204
    assert "transfer-encoding" not in headers and "content-length" not in headers
    writer.write(b"GET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads((await answer(reader))[2])["path"] == "/echo/after"
    writer.close()


async def test_a_chunked_request_body_is_streamed_whole(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(b"POST /echo/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"5\r\nhello\r\n", b"1", b"\r\n \r", b"\na\r\n0123456789\r\n", b"0\r\n\r\n"):
        writer.write(piece)  # split anywhere, even inside a size line
        await writer.drain()
        await asyncio.sleep(0.02)
    status, _, body = await answer(reader)
    assert status == 200 and json.loads(body)["body"] == "hello 0123456789"
    writer.write(b"GET /echo/next HTTP/1.1\r\nHost: x\r\n\r\n")  # the framing was followed
    assert json.loads((await answer(reader))[2])["path"] == "/echo/next"
    writer.close()


async def test_a_body_sent_while_the_handler_prepares_is_read_whole(edge):
    # 3 MiB arrive while prepare() waits: reading pauses past 1 MiB, and must resume.
    port, *_ = await edge()
    reader, writer = await connect(port)
    body = b"y" * (3 << 20)
    writer.write(
        b"POST /echo/big?prepare=0.3 HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, _, reply = await answer(reader)
    assert status == 200 and len(json.loads(reply)["body"]) == len(body)
    writer.close()


async def test_expect_100_continue_then_the_body_then_the_answer(gateway, edge):
    gw = await gateway("home", "guest_auth", "stream_glm5_plain_thinking")
    body = json.dumps({"model": "GLM-4.5", "messages": [{"role": "user", "content": "hi"}]})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    reader, writer = await connect(int(gw.url.rsplit(":", 1)[1]))
    writer.write(head)
    status, _, _ = await answer(reader)
    assert status == 100
    writer.write(body.encode())
    status, _, reply = await answer(reader)
    assert status == 200, reply
    assert json.loads(reply)["choices"][0]["message"]["content"]
    writer.close()


async def test_head_answers_headers_only(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(
        b"HEAD /echo/h HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/after-head HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    status, headers, _ = await answer(reader, head=True)
    assert status == 200 and int(headers["content-length"]) > 0
    # No body bytes followed the HEAD answer: the next thing read is the GET's answer.
    status, _, body = await answer(reader)
    assert status == 200 and json.loads(body)["path"] == "/echo/after-head"
    writer.close()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /echo HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n\r\n",  # no Host
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_a_malformed_request_is_a_400_then_closed(edge, head):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(head)
    status, headers, body = await answer(reader)
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert await closed_by_server(reader)
    writer.close()


@pytest.mark.parametrize(("kind", "sent"), [("short", b"12345"), ("long", b"")])
async def test_an_answer_off_its_content_length_closes_the_connection(edge, kind, sent):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(f"GET /framing/{kind} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    # Never more than announced (the longer one is not sent at all), and the close tells
    # the client the rest is not coming.
    raw = await asyncio.wait_for(reader.read(), 10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == sent
    if sent:
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 10" in head
    writer.close()


async def test_proxy_headers_are_taken_with_xheaders_for_that_request_only(edge):
    port, *_ = await edge(xheaders=True, trusted_downstream=["10.0.0.9"])
    reader, writer = await connect(port)
    writer.write(
        b"GET /echo/a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.9\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
    )
    seen = json.loads((await answer(reader))[2])
    assert (seen["remote_ip"], seen["protocol"]) == ("203.0.113.7", "https")
    writer.write(b"GET /echo/b HTTP/1.1\r\nHost: x\r\nX-Real-IP: 198.51.100.2\r\n\r\n")
    seen = json.loads((await answer(reader))[2])
    assert (seen["remote_ip"], seen["protocol"]) == ("198.51.100.2", "http")
    writer.write(b"GET /echo/c HTTP/1.1\r\nHost: x\r\nX-Real-IP: not-an-ip\r\n\r\n")
    seen = json.loads((await answer(reader))[2])
    assert seen["remote_ip"] == "127.0.0.1"
    writer.close()


async def test_proxy_headers_are_ignored_without_xheaders(edge):
    port, *_ = await edge()
    reader, writer = await connect(port)
    writer.write(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Real-IP: 198.51.100.2\r\nX-Scheme: https\r\n\r\n"
    )
    seen = json.loads((await answer(reader))[2])
    assert (seen["remote_ip"], seen["protocol"]) == ("127.0.0.1", "http")
    writer.close()


async def test_a_client_that_does_not_read_holds_the_writer_back(edge):
    port, _, _, sent = await edge()
    reader, writer = await connect(port)
    writer.write(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.5)
    # The socket buffers and the transport's high-water mark hold a few MiB at most.
    assert 0 < sent[0] < 100, sent
    status, _, body = await answer(reader)
    assert status == 200 and len(body) == 400 * 65536 and sent[0] == 400
    writer.close()


async def test_a_client_gone_mid_request_is_told_to_the_handler(edge):
    port, _, closed, _ = await edge()
    _, writer = await connect(port)
    writer.write(b"GET /echo/gone?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.02)
    assert closed == ["/echo/gone"]


async def test_stop_closes_idle_connections_and_busy_ones_after_their_answer(edge):
    port, server, *_ = await edge()
    idle_reader, idle_writer = await connect(port)
    reader, writer = await connect(port)
    writer.write(b"GET /echo/busy?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.1)
    server.stop()
    assert await closed_by_server(idle_reader)
    status, headers, body = await answer(reader)
    assert status == 200 and headers["connection"] == "close"
    assert json.loads(body)["path"] == "/echo/busy"
    assert await closed_by_server(reader)
    idle_writer.close()
    writer.close()
    with pytest.raises(OSError):  # the listening socket is closed
        await connect(port)
