"""Redis Sentinel (issue 17 item 5): ``REDIS_URL=redis+sentinel://...`` finds the master
through the sentinels of a real set (a master, a replica, three sentinels on loopback), and
when the master dies the gateway follows the failover by itself: requests meanwhile fail
fast with the 503 they get on plain Redis, service is back once the sentinels promote the
replica, and no lease, cooldown or issued key is lost. ``rediss+sentinel://`` does the same
on a set where every process listens on TLS only (Debian's redis-server is built with TLS),
checking the servers' certificate against ``REDIS_TLS_CA_FILE``."""

import asyncio
import os
import subprocess
import time

import openai
import pytest
from redis.exceptions import RedisError

from server.settings import SettingsError, load_settings
from state.connection import connect, sentinel_params
from tests.accounts import admin, pool_gateway
from tests.conftest import started
from tests.redis_sentinel import SentinelSet
from tests.redis_server import Tls, tls_binary

OK = "stream_glm5_plain_thinking"
HI = [{"role": "user", "content": "hi"}]


def test_sentinel_urls_are_read_whole():
    hosts, service, options = sentinel_params(
        "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/gw/2"
    )
    assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)]
    assert service == "gw" and options == {"db": 2, "password": "s3cret", "username": None}
    assert sentinel_params("redis+sentinel://h:1/gw")[2]["db"] == 0
    for bad in ("redis+sentinel://h:1", "redis+sentinel:///gw", "redis+sentinel://h:x/gw"):
        with pytest.raises(ValueError):
            sentinel_params(bad)


def test_a_sentinel_url_without_service_stops_start_up():
    with pytest.raises(SettingsError, match="REDIS_URL: needs sentinels and a service"):
        load_settings(_env_file=None, skip_auth_token=True, redis_url="redis+sentinel://h:1")
    ok = load_settings(_env_file=None, skip_auth_token=True, redis_url="redis+sentinel://h/gw")
    assert ok.redis_url == "redis+sentinel://h/gw"


def test_a_tls_sentinel_url_is_taken_and_its_ca_file_must_exist(tmp_path):
    url = "rediss+sentinel://:pw@h1,h2:26380/gw"
    assert sentinel_params(url) == (
        [("h1", 26379), ("h2", 26380)],
        "gw",
        {"db": 0, "password": "pw", "username": None},
    )
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ok = load_settings(
        _env_file=None, skip_auth_token=True, redis_url=url, redis_tls_ca_file=str(ca)
    )
    assert ok.redis_tls_ca_file == str(ca)
    with pytest.raises(SettingsError, match=r"REDIS_TLS_CA_FILE: .* is not a readable file"):
        load_settings(
            _env_file=None,
            skip_auth_token=True,
            redis_url=url,
            redis_tls_ca_file=str(tmp_path / "missing.pem"),
        )


@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory) -> Tls:
    """A throwaway self-signed certificate for 127.0.0.1 (openssl), its own CA."""
    folder = tmp_path_factory.mktemp("redis-tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    key.chmod(0o644)  # redis-server reads it as the test's user anyway; keep it plain
    return Tls(cert=cert, key=key, ca=cert)


def _tls_set(tls: Tls) -> SentinelSet:
    binary = tls_binary(tls)
    if binary is None:
        reason = "no redis-server built with TLS (Debian's is: apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return SentinelSet(binary=binary, tls=tls)


@pytest.fixture(params=["plain", "tls"])
def sentinel_set(request):
    if request.param == "tls":
        tls = request.getfixturevalue("redis_tls")
        sset = _tls_set(tls).start()
    else:
        sset = started(SentinelSet)
    yield sset
    sset.stop()


async def test_tls_sentinels_are_checked_against_the_ca_file(redis_tls):
    sset = _tls_set(redis_tls).start()
    try:
        trusting = connect(sset.url, 2.0, ca_file=str(redis_tls.ca))
        assert await trusting.ping()
        await trusting.aclose()
        untrusting = connect(sset.url, 2.0)  # the system's authorities never signed it
        started = time.monotonic()
        with pytest.raises(RedisError, match="No master found"):
            await untrusting.ping()
        # refused at once, not after redis-py's default 3 retries per sentinel (14 s here)
        assert time.monotonic() - started < 5
        await untrusting.aclose()
    finally:
        sset.stop()


async def test_the_gateway_follows_a_failover(sentinel_set, gateway):  # gateway stops first
    sset = sentinel_set
    ca = {"redis_tls_ca_file": str(sset.tls.ca)} if sset.tls else {}
    gw = await pool_gateway(
        gateway,
        redis_url=sset.url,
        lease_ttl=2,
        **ca,
    )
    code, created = await admin(gw, "POST", "/v1/keys", {"name": "team", "rpm": 1000})
    assert code == 201
    async with gw.openai(created["key"]) as client:

        async def ask() -> tuple[int, float]:
            started = time.monotonic()
            try:
                await client.chat.completions.create(model="GLM-5.1", messages=HI)
                return 200, time.monotonic() - started
            except openai.APIStatusError as err:
                return err.status_code, time.monotonic() - started

        for _ in range(3):
            assert (await ask())[0] == 200
        status = (await admin(gw, "GET", "/v1/token-pool/status"))[1]
        assert status["summary"]["active"] == 3
        # everything written so far is on the replica before the master dies
        assert sset.master.cli("WAIT", "1", "2000").strip() == "1"

        sset.kill_master()
        killed = time.monotonic()
        failover = asyncio.ensure_future(asyncio.to_thread(sset.wait_failover))
        answers: list[tuple[float, int, float]] = []
        while time.monotonic() - killed < 40:
            code, took = await ask()
            answers.append((time.monotonic() - killed, code, took))
            if len(answers) >= 3 and all(c == 200 for _, c, _ in answers[-3:]):
                break
            await asyncio.sleep(0.1)
        failover_seconds = await failover
    codes = {code for _, code, _ in answers}
    assert codes <= {200, 503}, answers
    assert answers[-1][1] == 200, answers
    # while there is no master a request fails fast (REDIS_TIMEOUT, no hang)...
    assert max((took for _, code, took in answers if code != 200), default=0) < 2.5, answers
    # ...and service is back within a moment of the promotion
    back = next(at for at, code, _ in answers if code == 200)
    assert back < failover_seconds + 3, (back, failover_seconds, answers)
    assert sset.master_port() == sset.replica.port

    # nothing lost or stuck: the key, the tokens, the leases
    status = (await admin(gw, "GET", "/v1/token-pool/status"))[1]
    assert status["summary"] == {"active": 3, "cooling": 0, "dead": 0, "pending": 0}
    await asyncio.sleep(2.2)  # a lease left by a request cut at the kill lapses by itself
    redis = gw.services.redis
    now_ms = int((await redis.time())[0]) * 1000
    for tid in await redis.hkeys("zai:{pool}:tokens"):
        assert await redis.zcount(f"zai:{{pool}}:leases:{tid}", now_ms, "+inf") == 0
    assert (await admin(gw, "GET", f"/v1/keys/{created['id']}"))[0] == 200
    print(f"failover {failover_seconds:.2f} s, service back after {back:.2f} s")
