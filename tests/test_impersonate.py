"""UPSTREAM_TRANSPORT=impersonate (issue 14 item 5): what is Chrome's about it, and what is not.

The TLS ClientHello each transport sends is read off the wire by a bare TCP server: the
impersonating one has Chrome's marks (GREASE values, the ALPS extension, ALPN h2), the native
one none of them. Every upstream call carries the browser headers of the settings (client
hints, User-Agent, Origin, fetch metadata, Referer, Accept-Language), on both transports, each
changeable and each dropped when set empty. Asked for without curl_cffi installed, the gateway
stops at start-up with one line naming the extra to install.
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
