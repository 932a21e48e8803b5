"""UPSTREAM_TRANSPORT=impersonate (issue 14 item 5): what is Chrome's about it, and what is not.

The TLS ClientHello each transport sends is read off the wire by a bare TCP server: the
impersonating one has Chrome's marks (GREASE values, the ALPS extension, ALPN h2), the native
one none of them. Every upstream call carries the browser headers of the settings (client
hints, User-Agent, Origin, fetch metadata, Referer, Accept-Language), on both transports, each
changeable and each dropped when set empty. Behind an HTTP/2 TLS front (nginx), answers
stream whole, connections are kept and a closed answer is cut at once, on both transports.
Asked for without curl_cffi installed, the gateway stops at start-up with one line naming the
extra to install.
"""

import asyncio
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings
from server.transport import Timeouts, TransportError
from tests.nginx import Nginx, nginx_binary

ROOT = Path(__file__).resolve().parent.parent
OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]
ALPS = {17513, 17613}  # application_settings: Chrome's, no OpenSSL client sends it


def _grease(value: int) -> bool:
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def parse_client_hello(data: bytes) -> dict:
    """Cipher suites, extension types and ALPN protocols of a TLS ClientHello record."""
    assert data[0] == 0x16 and data[5] == 0x01, "not a TLS ClientHello"
    pos = 5 + 4 + 2 + 32  # record header, handshake header, client_version, random
    pos += 1 + data[pos]  # session id
    (size,) = struct.unpack_from(">H", data, pos)
    ciphers = list(struct.unpack_from(f">{size // 2}H", data, pos + 2))
    pos += 2 + size
    pos += 1 + data[pos]  # compression methods
    (end,) = struct.unpack_from(">H", data, pos)
    pos, end = pos + 2, pos + 2 + end
    extensions, alpn = [], []
    while pos < end:
        kind, size = struct.unpack_from(">HH", data, pos)
        body = data[pos + 4 : pos + 4 + size]
        extensions.append(kind)
        if kind == 16:  # ALPN: a 2-byte list length, then length-prefixed names
            at = 2
            while at < len(body):
                alpn.append(body[at + 1 : at + 1 + body[at]].decode())
                at += 1 + body[at]
        pos += 4 + size
    return {"ciphers": ciphers, "extensions": extensions, "alpn": alpn}


async def test_the_client_hello_is_chromes_only_when_impersonating(transport):
    hellos: list[bytes] = []

    async def read_hello(reader, writer):
        head = await reader.readexactly(5)
        hellos.append(head + await reader.readexactly(struct.unpack(">H", head[3:5])[0]))
        writer.close()  # no handshake: the client's first flight is all this test needs

    server = await asyncio.start_server(read_hello, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TransportError):
            url = f"https://localhost:{port}/"
            await transport.open_stream("GET", url, {}, None, Timeouts(2, 2, 2))
    finally:
        server.close()
    hello = parse_client_hello(hellos[0])
    chrome = {
        "GREASE cipher": any(map(_grease, hello["ciphers"])),
        "GREASE extension": any(map(_grease, hello["extensions"])),
        "ALPS": bool(ALPS & set(hello["extensions"])),
        "ALPN h2": hello["alpn"][:1] == ["h2"],
    }
    if transport.name == "impersonate":
        assert all(chrome.values()), chrome
    else:  # the fingerprint the WAF singles out: Python's own
        assert not any(chrome.values()), chrome


@pytest.mark.parametrize(
    ("custom", "expect"),
    [
        ({}, {}),
        (
            {
                "zai_user_agent": "Mozilla/5.0 Chrome/199.0.0.0",
                "zai_sec_ch_ua": '"Google Chrome";v="199"',
                "zai_sec_ch_ua_platform": "",  # not sent
                "zai_accept_language": "de-DE,de;q=0.9",
                "zai_origin": "https://chat.z.ai",
                "zai_referer": "https://chat.z.ai/c/fixed",
            },
            {"Origin": "https://chat.z.ai", "Referer": "https://chat.z.ai/c/fixed"},
        ),
    ],
    ids=["defaults", "each set"],
)
async def test_every_call_carries_the_browser_headers_of_the_settings(
    gateway, transport, custom, expect
):
    gw = await gateway("home", "guest_auth", OK, upstream_transport=transport.name, **custom)
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].message.content
    settings = gw.services.settings
    base = gw.fake.base_url
    wanted = {
        "User-Agent": settings.zai_user_agent,
        "sec-ch-ua": settings.zai_sec_ch_ua,
        "sec-ch-ua-mobile": "?0",
        "sec-ch-ua-platform": settings.zai_sec_ch_ua_platform,
        "Accept-Language": settings.zai_accept_language,
        "Origin": expect.get("Origin", base),
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Dest": "empty",
    }
    paths = {r.path for r in gw.fake.requests}
    assert {"/", "/api/config", "/api/v1/auths/", "/api/v2/chat/completions"} <= paths
    for seen in gw.fake.requests:
        for name, value in wanted.items():
            assert seen.headers.get(name) == (value or None), (seen.path, name)
        page = "/c/" if seen.path.endswith("/completions") else "/"
        referer = expect.get("Referer") or base + page
        assert seen.headers["Referer"].startswith(referer), seen.path
    if custom:
        assert "sec-ch-ua-platform" not in gw.fake.requests[0].headers


def test_impersonate_without_curl_cffi_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "curl_cffi", None)  # as if not installed
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, skip_auth_token=True, upstream_transport="impersonate")
    text = str(info.value)
    assert text.startswith("invalid setting UPSTREAM_TRANSPORT: impersonate needs")
    assert "zai-gateway[impersonate]" in text and "UPSTREAM_TRANSPORT=native" in text


def test_the_gateway_stops_at_start_up_with_that_line():
    hide = "import sys, runpy; sys.modules['curl_cffi'] = None; runpy.run_module('server', run_name='__main__')"  # noqa: E501
    env = {
        **os.environ,
        "UPSTREAM_TRANSPORT": "impersonate",
        "AUTH_TOKEN": "sk-start-up",
    }
    done = subprocess.run(
        [sys.executable, "-c", hide], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    last = done.stderr.decode().strip().splitlines()[-1]
    assert "UPSTREAM_TRANSPORT: impersonate needs the curl_cffi package" in last
    assert "pip install 'zai-gateway[impersonate]'" in last


def test_an_unknown_impersonation_target_is_named():
    with pytest.raises(SettingsError, match=r"UPSTREAM_IMPERSONATE: .* cannot impersonate 'ie6'"):
        load_settings(
            _env_file=None,
            skip_auth_token=True,
            upstream_transport="impersonate",
            upstream_impersonate="ie6",
        )


EVENT = b'data: {"type":"chat:completion","data":{"phase":"answer","delta_content":"hi"}}\n\n'
H2_FRONT = """worker_processes 1;
events {{ worker_connections 64; }}
http {{
    log_format proto '$server_protocol $connection $status $request_uri';
    access_log {logs}/access.log proto;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


class Origin:
    """Streams 10 events 20 ms apart at /stream; at /slow one event, then waits for the
    client to leave (counted in ``left``)."""

    def __init__(self) -> None:
        self.left = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                slow = b" /slow " in head.split(b"\r\n", 1)[0]
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(1 if slow else 10):
                    writer.write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
                    await writer.drain()
                    await asyncio.sleep(0.02)
                if slow:
                    if not await reader.read(1):  # nothing more comes: the client left
                        self.left += 1
                    return
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_streams_over_http2_are_whole_kept_alive_and_cut_at_once(
    transport, tls_files, tmp_path
):
    """Behind a TLS front that speaks HTTP/2 (Debian's nginx), as chat.z.ai's does: the
    impersonating transport streams over one HTTP/2 connection (the native one over HTTP/1.1
    keep-alive), each answer arrives in pieces as sent, and closing an answer midway reaches
    the origin at once."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (see .ci/run)")
    key, cert = tls_files
    origin = Origin()
    origin_port = await origin.start()
    front = Nginx(tmp_path, [origin_port], config="listen 8080;\nserver 127.0.0.1:1 ;\n")
    front.conf.write_text(
        H2_FRONT.format(
            logs=tmp_path / "logs", origin=origin_port, port=front.port, cert=cert, key=key
        )
    )
    front.start(binary)
    open_stream = transport.trust(str(cert))
    base = f"https://localhost:{front.port}"
    try:
        for _ in range(3):
            exchange = await open_stream("GET", base + "/stream", {}, None, Timeouts(5, 5, 5))
            chunks = [chunk async for chunk in exchange]
            exchange.close()
            assert exchange.status == 200 and b"".join(chunks) == EVENT * 10
            assert len(chunks) >= 5  # as the origin sent them, 20 ms apart: not buffered
        exchange = await open_stream("GET", base + "/slow", {}, None, Timeouts(5, 5, 5))
        assert await exchange.__anext__() == EVENT
        exchange.close()  # the client is gone: the front drops the origin's request
        deadline = asyncio.get_running_loop().time() + 3
        while not origin.left and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert origin.left == 1
        exchange = await open_stream("GET", base + "/stream", {}, None, Timeouts(5, 5, 5))
        assert await exchange.read_all() == EVENT * 10
        exchange.close()
        await asyncio.sleep(0.1)  # the access log line of the last answer
        lines = [line.split() for line in front.access()]
    finally:
        front.stop()
        origin.server.close()
    protocol = {"impersonate": "HTTP/2.0", "native": "HTTP/1.1"}[transport.name]
    assert {line[0] for line in lines} == {protocol}
    streams = [line[1] for line in lines if line[3] == "/stream"]
    assert len(streams) == 4 and len(set(streams[:3])) == 1  # kept alive
    if transport.name == "impersonate":  # HTTP/2: a reset stream leaves the connection up
        assert len(set(streams)) == 1
