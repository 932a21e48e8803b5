"""Egress routes (issue 14) through real proxies on loopback: tinyproxy (HTTP CONNECT, with
basic credentials) and dante (SOCKS5), each sending from its own 127.0.0.x address, which is
how the fake upstream (and the real WAF) tells the routes apart. Every upstream call leaves by
a route; HTTPS is tunnelled (real TLS through both); a route the fake blocks gets its own
breaker opened, shared through a real redis-server, and traffic moves to the other route with
no client error; with every route blocked the client gets 503 waf_blocked with the soonest
Retry-After; proxy credentials appear in no log line, status answer, metric or error. What
goes through a proxy is checked on both transports (UPSTREAM_TRANSPORT native and
impersonate); a dead proxy shuts its route, never a token."""

import asyncio
import os
import ssl

import openai
import pytest
from loguru import logger
from tornado.httpclient import AsyncHTTPClient

from server.egress import parse_routes
from server.settings import SettingsError, load_settings
from server.transport import Proxy, Timeouts, TransportError
from tests.accounts import ADMIN, TOKENS, admin
from tests.proxies import Dante, Tinyproxy
from tests.redis_server import free_port

OK = "stream_glm5_plain_thinking"
HELLO = [{"role": "user", "content": "hello"}]
PROXY_USER = "route-user"
PROXY_PASSWORD = "pr0xy-pass-7f3a9c"  # must never be shown anywhere
HTTP_FROM, SOCKS_FROM = "127.0.0.2", "127.0.0.3"
SOCKS_USER = f"zgw-socks-{os.getpid()}"  # a system user for its fixture's life (dante's rule)
SOCKS_PASSWORD = "s0cks-pass-4e1d8b"  # must never be shown anywhere


def _started(proxy):
    try:
        return proxy.start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tinyproxy():
    proxy = _started(Tinyproxy(HTTP_FROM, PROXY_USER, PROXY_PASSWORD))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def dante():
    proxy = _started(Dante(SOCKS_FROM))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def dante_login():
    proxy = _started(Dante(SOCKS_FROM, SOCKS_USER, SOCKS_PASSWORD))
    yield proxy
    proxy.stop()


def sources(gw, completions_only: bool = False) -> list[str]:
    seen = gw.completions_seen() if completions_only else gw.fake.requests
    return [r.source for r in seen]


@pytest.mark.parametrize("which", ["tinyproxy", "dante"])
async def test_every_upstream_call_leaves_through_the_route(gateway, request, which, transport):
    proxy = request.getfixturevalue(which)
    gw = await gateway(
        "home", "guest_auth", OK, upstream_proxies=proxy.url, upstream_transport=transport.name
    )
    async with gw.openai() as client:
        reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert reply.choices[0].message.content
    paths = {r.path for r in gw.fake.requests}
    assert {"/", "/api/v1/auths/", "/api/v2/chat/completions"} <= paths
    assert set(sources(gw)) == {proxy.bind}  # home page, sign-in, config, completion: all


@pytest.mark.parametrize("which", ["tinyproxy", "dante"])
async def test_https_is_tunnelled_through_the_proxy(request, transport, tls_files, which):
    proxy = request.getfixturevalue(which)
    key, cert = tls_files
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    peers = []

    async def answer(reader, writer):
        peers.append(writer.get_extra_info("peername")[0])
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ntunnelled")
        await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    open_stream = transport.trust(str(cert))
    try:
        url = f"https://localhost:{port}/x"
        exchange = await open_stream("GET", url, {}, None, Timeouts(), Proxy.parse(proxy.url))
        assert exchange.status == 200 and await exchange.read_all() == b"tunnelled"
        exchange.close()
        assert peers == [proxy.bind]  # TLS end to end, and the server saw the proxy's address
    finally:
        server.close()


async def test_wrong_proxy_credentials_say_so_without_the_password(tinyproxy, transport):
    wrong = Proxy.parse(f"http://{PROXY_USER}:not-{PROXY_PASSWORD}@127.0.0.1:{tinyproxy.port}")
    with pytest.raises(TransportError) as info:
        await transport.open_stream("GET", "http://127.0.0.1:9/", {}, None, Timeouts(), wrong)
    text = str(info.value)
    assert "wants other credentials" in text and "http://***@127.0.0.1" in text
    assert PROXY_PASSWORD not in text and PROXY_USER not in text


async def test_socks5_with_credentials_gets_through_and_never_shows_them(
    gateway, dante_login, transport
):
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        gw = await gateway(
            "home", "guest_auth", OK, upstream_proxies=dante_login.url, **_ADMIN,
            upstream_transport=transport.name,
        )  # fmt: skip
        async with gw.openai() as client:
            reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        _, status = await admin(gw, "GET", "/v1/token-pool/status")
        _, check = await admin(gw, "GET", "/v1/upstream/check")
        metrics = (await AsyncHTTPClient().fetch(gw.url + "/metrics")).body.decode()
        port = dante_login.port
        for who, words in [
            (f"{SOCKS_USER}:not-{SOCKS_PASSWORD}", "rejected the credentials"),
            ("", "accepts none of our authentication methods"),  # it really demands them
        ]:
            proxy = Proxy.parse(f"socks5://{who}{'@' if who else ''}127.0.0.1:{port}")
            with pytest.raises(TransportError, match=words) as info:
                url = gw.fake.base_url + "/"
                await transport.open_stream("GET", url, {}, None, Timeouts(), proxy)
            lines.append(str(info.value))
    finally:
        logger.remove(sink)
    assert reply.choices[0].message.content
    assert set(sources(gw)) == {SOCKS_FROM}  # every call, through the login-only proxy
    assert status["routes"][0]["label"] == f"socks5://***@127.0.0.1:{port}"
    assert check["ok"] and check["routes"][0]["label"] == status["routes"][0]["label"]
    for text in ("\n".join(lines), str(status), str(check), metrics):
        assert SOCKS_PASSWORD not in text and SOCKS_USER not in text


_ADMIN = {"admin_token": ADMIN}


def _two_routes(tinyproxy, dante, real_redis_server) -> dict:
    return {
        "zai_tokens": TOKENS[0],
        "anonymous_mode": False,
        "admin_token": ADMIN,
        "redis_url": real_redis_server.url,
        "redis_prefix": "egress-test:",
        "upstream_proxies": f"{tinyproxy.url},{dante.url}",
        # The routes take turns per call; the chat deletes and model-list reads that follow
        # an answer are calls too, so these tests, which count completions' turns, keep off.
        "zai_chats": "keep",
        "zai_models": "static",
    }


async def test_a_blocked_route_is_skipped_by_every_replica(
    gateway, tinyproxy, dante, real_redis_server
):
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    common = _two_routes(tinyproxy, dante, real_redis_server)
    try:
        first = await gateway("home", "guest_auth_user_role", OK, **common)
        await first.services.redis.flushall()
        await first.services.pool.add([TOKENS[0]])
        await first.services.health_check()
        second = await gateway("home", "guest_auth_user_role", OK, **common)
        for gw in (first, second):
            gw.fake.waf_sources = {HTTP_FROM}  # the WAF dislikes the HTTP proxy's address
        async with first.openai() as client:
            for _ in range(4):  # the first lands on the blocked route and moves, unseen
                reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
                assert reply.choices[0].message.content
        seen = sources(first, completions_only=True)  # routes take turns until one is blocked
        assert seen.count(HTTP_FROM) == 1 and seen.count(SOCKS_FROM) == 4
        assert set(seen[seen.index(HTTP_FROM) + 1 :]) == {SOCKS_FROM}
        async with second.openai() as client:  # the other replica never tries the blocked one
            for _ in range(3):
                await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        assert sources(second, completions_only=True) == [SOCKS_FROM] * 3
        _, status = await admin(first, "GET", "/v1/token-pool/status")
        metrics = (await AsyncHTTPClient().fetch(first.url + "/metrics")).body.decode()
    finally:
        logger.remove(sink)
    blocked, healthy = status["routes"]
    assert blocked["label"] == f"http://***@127.0.0.1:{tinyproxy.port}"
    assert 55 <= blocked["blocked_for"] <= 60 and healthy["blocked_for"] == 0
    assert healthy["label"] == f"socks5://127.0.0.1:{dante.port}"
    assert status["summary"]["active"] == 1 and status["tokens"][0]["failures"] == 0
    assert f'zai_gateway_route_blocked_seconds{{route="{blocked["id"]}"}} 5' in metrics
    assert any(blocked["id"] in line and "WAF block" in line for line in lines)
    for text in ("\n".join(lines), str(status), metrics):
        assert PROXY_PASSWORD not in text and PROXY_USER not in text


async def test_every_route_blocked_is_503_with_the_soonest_return(
    gateway, tinyproxy, dante, real_redis_server
):
    common = _two_routes(tinyproxy, dante, real_redis_server)
    gw = await gateway("home", "guest_auth_user_role", OK, **common)
    await gw.services.redis.flushall()
    await gw.services.pool.add([TOKENS[0]])
    await gw.services.health_check()
    gw.fake.waf_sources = {HTTP_FROM, SOCKS_FROM}
    seconds, micros = await gw.services.redis.time()
    soon = {"until": seconds * 1000 + micros // 1000 + 20_000, "backoff": 20}
    services = gw.services
    await services.redis.hset(services.keys.waf(services.egress.routes[1].id), mapping=soon)
    async with gw.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
        err = info.value
        assert err.status_code == 503 and err.code == "waf_blocked"
        assert "every egress route (2) is blocked" in err.message
        assert sources(gw, completions_only=True) == [HTTP_FROM]  # the open one, then none
        assert 15 <= int(err.response.headers["Retry-After"]) <= 20  # the SOCKS route's return
        with pytest.raises(openai.APIStatusError) as info:  # nothing is sent while all are
            await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
    assert info.value.code == "waf_blocked" and len(gw.completions_seen()) == 1


def test_routes_are_parsed_deduplicated_and_masked():
    routes = parse_routes(
        ["direct", f"http://{PROXY_USER}:{PROXY_PASSWORD}@p.example:3128", "socks5h://s:1080",
         "DIRECT", f"http://{PROXY_USER}:other@p.example:3128"]
    )  # fmt: skip
    assert [r.label for r in routes] == [
        "direct", "http://***@p.example:3128", "socks5://s:1080"
    ]  # fmt: skip
    assert routes[0].id == "direct" and all(r.id.startswith("proxy-") for r in routes[1:])
    assert PROXY_PASSWORD not in repr(routes) and parse_routes([])[0].id == "direct"


def test_a_bad_proxy_setting_names_itself_but_not_its_password():
    with pytest.raises(SettingsError) as info:
        load_settings(
            _env_file=None, skip_auth_token=True, upstream_proxies=f"ftp://u:{PROXY_PASSWORD}@h"
        )
    text = str(info.value)
    assert "UPSTREAM_PROXIES" in text and "'ftp' is not supported" in text
    assert PROXY_PASSWORD not in text


class SilentProxy:
    """A proxy that accepts connections and never says a word (hung); counts them."""

    def __init__(self) -> None:
        self.accepted = 0
        self._held: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        async def hold(reader, writer):
            self.accepted += 1
            self._held.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        for writer in self._held:
            writer.close()
        self.server.close()


def _pooled(**more) -> dict:
    return {
        "zai_tokens": ",".join(TOKENS[:2]),
        "anonymous_mode": False,
        "admin_token": ADMIN,
        "pool_max_concurrency": 0,
        "upstream_connect_timeout": 0.5,  # how long the silent proxy holds a request back
        "zai_chats": "keep",
        "zai_models": "static",
        **more,
    }


@pytest.mark.parametrize("dead", ["refused", "silent"])
async def test_a_dead_proxy_shuts_its_route_never_a_token(gateway, tinyproxy, dead, transport):
    silent = SilentProxy()
    dead_url = await silent.start() if dead == "silent" else f"http://127.0.0.1:{free_port()}"
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    try:
        gw = await gateway(
            "home", "guest_auth_user_role", OK, upstream_proxies=f"{dead_url},{tinyproxy.url}",
            **_pooled(upstream_transport=transport.name),
        )  # fmt: skip
        async with gw.openai() as client:
            for _ in range(4):  # the dead route is first in turn: only the first call tries it
                reply = await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
                assert reply.choices[0].message.content
        _, status = await admin(gw, "GET", "/v1/token-pool/status")
    finally:
        logger.remove(sink)
        if dead == "silent":
            silent.close()
    assert len(gw.completions_seen()) == 4 and set(sources(gw)) == {HTTP_FROM}
    if dead == "silent":
        assert silent.accepted == 1  # one call found it dead; every replica keeps off it
    down, healthy = status["routes"]
    assert down["state"] == "blocked" and down["reason"] == "route_unreachable"
    assert 5 <= down["blocked_for"] <= 10 and down["label"] == dead_url
    assert healthy["state"] == "ok" and healthy["reason"] == ""
    assert status["summary"]["active"] == 2  # no token was blamed for the proxy
    assert all(row["state"] == "active" and row["failures"] == 0 for row in status["tokens"])
    assert any(down["id"] in line and "unreachable" in line for line in lines)


async def test_the_only_route_dead_is_502_route_unreachable_with_retry_after(gateway, transport):
    dead_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{free_port()}"
    gw = await gateway(
        "home", "guest_auth_user_role", OK, upstream_proxies=dead_url,
        **_pooled(upstream_transport=transport.name),
    )  # fmt: skip
    async with gw.openai() as client:
        for _ in range(2):  # the second is not even tried: the route is held back
            with pytest.raises(openai.APIStatusError) as info:
                await client.chat.completions.create(model="GLM-4.5", messages=HELLO)
            err = info.value
            assert err.status_code == 502 and err.code == "route_unreachable"
            assert 5 <= int(err.response.headers["Retry-After"]) <= 10
            assert "http://***@127.0.0.1" in err.message and PROXY_PASSWORD not in err.message
    _, status = await admin(gw, "GET", "/v1/token-pool/status")
    assert status["routes"][0]["reason"] == "route_unreachable"
    assert not gw.fake.requests  # nothing reached the upstream
    assert all(row["failures"] == 0 for row in status["tokens"])
