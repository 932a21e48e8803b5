"""``python -m server`` as a user runs it: settings from the environment, real process.

Invalid settings stop start-up with one line naming the variable; a valid start serves the
official SDK from a cassette upstream, logs one line per request without any token, and
SIGTERM exits 0.
"""

import asyncio
import re
import signal
import socket
import subprocess
import sys

import openai
import pytest

from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream
from tests.processes import gateway_env
from tests.redis_server import RedisServer

POOLED = [f"eyJhbGciOiJFUzI1NiJ9.pooled-{n}.signature-{n}-abcdefgh" for n in range(2)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_invalid_settings_stop_startup_with_one_line():
    cases = [
        ({}, "AUTH_TOKEN"),
        ({"AUTH_TOKEN": "k", "LISTEN_PORT": "eighty"}, "LISTEN_PORT"),
        ({"AUTH_TOKEN": "k", "ZAI_BASE_URL": "chat.z.ai"}, "ZAI_BASE_URL"),
        ({"AUTH_TOKEN": "k", "WORKERS": "0"}, "WORKERS"),
        ({"AUTH_TOKEN": "k", "EVENT_LOOP": "trio"}, "EVENT_LOOP"),
        ({"AUTH_TOKEN": "k", "AUTH_TOKENS_FILE": "/nonexistent/tokens.txt"}, "AUTH_TOKENS_FILE"),
    ]
    for values, name in cases:
        done = subprocess.run(
            [sys.executable, "-m", "server"],
            env=gateway_env(**values),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and name in lines[0], lines


@pytest.mark.parametrize(("workers", "loop"), [("1", "auto"), ("1", "asyncio"), ("2", "uvloop")])
async def test_run_serve_and_sigterm(tmp_path, workers, loop, request):
    redis_url = request.getfixturevalue("real_redis_server").url if workers == "2" else ""
    fake = FakeUpstream("home", "guest_auth", "stream_glm5_plain_thinking")
    base = await fake.start()
    port = _free_port()
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=gateway_env(
            AUTH_TOKEN=API_KEY,
            ZAI_BASE_URL=base,
            LISTEN_PORT=str(port),
            LISTEN_HOST="127.0.0.1",
            WORKERS=workers,
            EVENT_LOOP=loop,
            REDIS_URL=redis_url,
        ),
    )
    try:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0
        )
        for _ in range(100):
            try:
                await client.models.list()
                break
            except openai.APIConnectionError:
                await asyncio.sleep(0.1)
        for _ in range(4):
            reply = await client.chat.completions.create(
                model="GLM-4.5", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content.startswith("Hi there!")
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
        await fake.close()
    log.seek(0)
    text = log.read()
    log.close()
    assert code == 0, text
    assert ("embedded fakeredis" in text) == (not redis_url)
    # the banner, once per start whatever WORKERS is
    assert text.count(f"docs: http://127.0.0.1:{port}/docs (OpenAI base URL") == 1, text
    assert text.count("tokens: no pooled Z.AI tokens") == 1
    assert text.count("over Python's TLS (UPSTREAM_TRANSPORT=impersonate") == 1, text
    assert text.count("anonymous mode on: a fresh guest token for every request") == 1
    expected_loop = "asyncio" if loop == "asyncio" else "uvloop"
    assert text.count(f"{expected_loop} loop)") == int(workers), text
    access = [line for line in text.splitlines() if "/v1/chat/completions" in line]
    assert len(access) == 4 and "status=200" in access[0] and "ttfb=" in access[0]
    assert "model=GLM-4.5" in access[0]
    # Written by the gateway's own access path, in the sink's format, with the pid of the
    # worker that served it (a forked worker's, not the parent's).
    shape = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO    (\d+) ")
    pid = {line: m.group(1) for line in text.splitlines() if (m := shape.match(line))}
    loops = {pid.get(line) for line in text.splitlines() if f"{expected_loop} loop)" in line}
    assert len(loops) == int(workers) and None not in loops
    assert all(pid.get(line) in loops for line in access), text
    guest_token = fake.requests[1].query.get("token") or ""
    assert API_KEY not in text and "eyJ" not in text
    assert not guest_token or guest_token not in text


async def test_banner_masks_the_redis_password_and_counts_the_pool(tmp_path):
    password = "redis-pass-0123456789"
    redis = RedisServer(extra=("--requirepass", password)).start()
    fake = FakeUpstream("home", "guest_auth_user_role")
    base = await fake.start()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=gateway_env(
                AUTH_TOKEN=API_KEY,
                ZAI_BASE_URL=base,
                LISTEN_PORT=str(_free_port()),
                LISTEN_HOST="127.0.0.1",
                REDIS_URL=f"redis://:{password}@127.0.0.1:{redis.port}/0",
                ZAI_TOKENS=",".join(POOLED),
                ANONYMOUS_MODE="false",
                UPSTREAM_TRANSPORT="impersonate",
            ),
        )
    try:
        for _ in range(300):  # the banner's last line, or the process's end
            if "anonymous mode" in log_path.read_text() or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
        await fake.close()
        redis.stop()
    text = log_path.read_text()
    assert code == 0, text
    assert f"redis: redis://:***@127.0.0.1:{redis.port}/0, shared by every" in text, text
    assert f"upstream: {base} over chrome152's TLS and HTTP/2 fingerprint" in text, text
    assert "tokens: 2 pooled Z.AI tokens (2 active)" in text, text
    assert "anonymous mode off: requests use pooled tokens only" in text
    assert password not in text and not any(token in text for token in POOLED)
