"""Hostile input over real sockets: each is a 4xx shaped like the API called, naming the
problem, never a 500, a hang or a log line the client wrote.

Invalid UTF-8 and deep nesting in every free-form field of every route, body and header
limits, the access log's model name, a session cookie that is not ASCII, and client-sized work
(stop sequences, count_tokens).
"""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import API_KEY

ADMIN = "admin-hostile-0123456789"
HELLO = [{"role": "user", "content": "hello"}]
OPENAI = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
ANTHROPIC = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}


def with_deep(make, depth: int) -> bytes:
    """The request ``make`` builds, its free-form field nested ``depth`` levels deep (as text:
    json.dumps itself gives up near 1,000)."""
    value = '{"a":[' * (depth // 2) + "{}" + "]}" * (depth // 2)
    return json.dumps(make("DEEP")).encode().replace(b'"DEEP"', value.encode())


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
RESPONSES_TOOL = {"type": "function", "name": "f"}

# method, route, headers, a request body holding ``value`` in one of its free-form fields:
# every route that reads a JSON body, the client faces and the admin API alike
ROUTES = {
    "tools.parameters": (
        "POST",
        "/v1/chat/completions",
        OPENAI,
        lambda v: {
            "model": "GLM-4.5",
            "messages": HELLO,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": v}}],
        },
    ),
    "metadata": (
        "POST",
        "/v1/messages",
        ANTHROPIC,
        lambda v: {"model": "GLM-4.5", "max_tokens": 5, "messages": HELLO, "metadata": v},
    ),
    "input_schema": (
        "POST",
        "/v1/messages/count_tokens",
        ANTHROPIC,
        lambda v: {
            "model": "GLM-4.5",
            "messages": HELLO,
            "tools": [{"name": "f", "input_schema": v}],
        },
    ),
    "responses.tools.parameters": (
        "POST",
        "/v1/responses",
        OPENAI,
        lambda v: {
            "model": "GLM-4.5",
            "input": "hi",
            "tools": [{**RESPONSES_TOOL, "parameters": v}],
        },
    ),
    "responses.text.format.schema": (
        "POST",
        "/v1/responses",
        OPENAI,
        lambda v: {
            "model": "GLM-4.5",
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "s", "schema": v}},
        },
    ),
    "admin": ("POST", "/v1/token-pool/update", ADMIN_HEADERS, lambda v: [v]),
    "upstream.config": ("PUT", "/v1/upstream/config", ADMIN_HEADERS, lambda v: {"x": v}),
    "keys.new": ("POST", "/v1/keys", ADMIN_HEADERS, lambda v: {"name": v}),
    "keys.change": ("PATCH", "/v1/keys/0123456789ab", ADMIN_HEADERS, lambda v: {"name": v}),
    "captcha": ("POST", "/v1/captcha", ADMIN_HEADERS, lambda v: {"params": [v]}),
}
# Bytes that are not UTF-8: a stray byte, a surrogate and an overlong NUL written as UTF-8,
# a code point past U+10FFFF, a cut sequence.
NOT_UTF8 = (b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")


async def post(gw, path: str, body: bytes, headers: dict, method: str = "POST") -> tuple[int, dict]:
    reply = await AsyncHTTPClient().fetch(
        gw.url + path, method=method, body=body, headers=headers, raise_error=False
    )
    return reply.code, json.loads(reply.body)


def assert_shaped(path: str, error: dict) -> None:
    """The error body of the API called: Anthropic's has a top-level ``type``."""
    if path.startswith("/v1/messages"):
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
    else:
        assert "type" not in error
        assert error["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("field", ROUTES)
async def test_invalid_utf8_is_a_400_naming_it(gateway, field):
    gw = await gateway("home", "guest_auth", admin_token=ADMIN)
    method, path, headers, make = ROUTES[field]
    for bad in NOT_UTF8:
        body = json.dumps(make({"secretword": "MARK"})).encode().replace(b"MARK", bad + b"MARK")
        status, error = await post(gw, path, body, headers, method)
        assert status == 400, (bad, error)
        assert_shaped(path, error)
        assert "UTF-8" in error["error"]["message"]
        assert "secretword" not in error["error"]["message"]


@pytest.mark.parametrize("field", ROUTES)
async def test_deep_nesting_is_a_400_in_every_free_form_field(gateway, field):
    gw = await gateway("home", "guest_auth", admin_token=ADMIN)
    method, path, headers, make = ROUTES[field]
    for depth in (100, 1000, 100_000):
        status, error = await post(gw, path, with_deep(make, depth), headers, method)
        assert status == 400, (depth, error)
        assert_shaped(path, error)
        assert "nests deeper than 64" in error["error"]["message"]


async def test_ordinary_nesting_still_decodes(gateway):
    gw = await gateway("home", "guest_auth")
    _, path, headers, make = ROUTES["input_schema"]
    status, reply = await post(gw, path, with_deep(make, 40), headers)
    assert status == 200 and reply["input_tokens"] > 0


def port_of(gw) -> int:
    return int(gw.url.rsplit(":", 1)[1])


async def raw_exchange(gw, data: bytes, wait: float = 10.0) -> bytes:
    """Send ``data`` on a raw socket and read until the gateway closes it (or ``wait`` ends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


async def test_a_body_that_never_comes_is_cut_off(gateway):
    gw = await gateway("home", "guest_auth", body_timeout=0.3)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    # Without a body timeout the socket stays open: wait_for raises TimeoutError.
    assert await raw_exchange(gw, head) == b""


async def test_a_session_cookie_that_is_not_ascii_is_no_session(gateway):
    gw = await gateway("home", "guest_auth", admin_token=ADMIN)
    cookie = b"Cookie: zai_admin=1.a.\xe9\xff\r\n"  # a header is bytes: latin-1 once read
    for line, want in (
        (b"GET /admin", b" 200 "),  # the login page
        (b"GET /admin/data", b" 401 "),
        (b"POST /admin/keys/0123456789ab/disable", b" 401 "),
    ):
        head = line + b" HTTP/1.1\r\nHost: x\r\n" + cookie + b"Content-Length: 0\r\n"
        answer = await raw_exchange(gw, head + b"Connection: close\r\n\r\n")
        assert want in answer.split(b"\r\n", 1)[0], (line, answer[:300])


@pytest.fixture
def access_lines():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="INFO")
    yield lines
    logger.remove(sink)


async def test_a_hostile_model_name_forges_no_log_line(gateway, access_lines):
    gw = await gateway("home", "guest_auth")
    name = "GLM\r\n2026-12-02 00:00:00 INFO forged\x1b[31m\u2028" + "x" * 1_000_000
    body = json.dumps({"model": name, "messages": HELLO}).encode()
    status, error = await post(gw, "/v1/chat/completions", body, OPENAI)
    assert status == 404
    message = error["error"]["message"]
    assert len(message) < 2000 and "\x1b" not in message and "\r" not in message
    assert f"({len(name)} characters)" in message
    line = next(line for line in access_lines if "/v1/chat/completions" in line)
    assert line.count("\n") == 1 and "\r" not in line and "\x1b" not in line
    assert "\u2028" not in line and len(line) < 1000
    assert "model=GLM\\r\\n2026" in line


async def test_a_request_abandoned_before_its_answer_is_logged_499(gateway, access_lines):
    gw = await gateway("home", "guest_auth", stall_headers=True)
    body = json.dumps({"model": "GLM-4.5", "messages": HELLO}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    writer.write(head + body)
    await writer.drain()
    while not gw.completions_seen():  # the upstream has the request: the gateway waits
        await asyncio.sleep(0.02)
    writer.close()
    for _ in range(250):
        done = [line for line in access_lines if "POST /v1/chat/completions" in line]
        if done:
            break
        await asyncio.sleep(0.02)
    assert done and " status=499 " in done[0], done


def test_a_logged_traceback_prints_no_variable_value(tmp_path):
    script = (
        "from loguru import logger\n"
        "from server.logs import setup_logging\n"
        "setup_logging(False)\n"
        "def fail(body):\n"
        "    return body['missing']\n"
        "try:\n"
        "    fail({'prompt': '-'.join(['PRIVATE', 'WORDS'])})\n"
        "except KeyError:\n"
        "    logger.exception('request failed')\n"
    )
    (tmp_path / "fails.py").write_text(script)  # a file: loguru annotates only source lines
    run = subprocess.run(
        [sys.executable, str(tmp_path / "fails.py")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert "KeyError" in run.stderr and "request failed" in run.stderr
    assert "PRIVATE-WORDS" not in run.stderr


@pytest.mark.parametrize(
    ("path", "headers", "field", "cap"),
    [
        ("/v1/chat/completions", OPENAI, "stop", 4),
        ("/v1/messages", ANTHROPIC, "stop_sequences", 16),
    ],
)
async def test_stop_sequences_are_capped(gateway, path, headers, field, cap):
    gw = await gateway("home", "guest_auth")
    request = {"model": "GLM-4.5", "max_tokens": 5, "messages": HELLO}
    body = json.dumps({**request, field: [f"s{i}" for i in range(300_000)]}).encode()
    status, error = await post(gw, path, body, headers)
    assert status == 400
    assert field in error["error"]["message"] and f"<= {cap}" in error["error"]["message"]
    assert not gw.completions_seen()


async def test_count_tokens_refuses_more_than_any_context(gateway):
    gw = await gateway("home", "guest_auth")
    huge = [{"role": "user", "content": "word " * 500_000}]
    body = json.dumps({"model": "GLM-4.5", "messages": huge}).encode()
    status, error = await post(gw, "/v1/messages/count_tokens", body, ANTHROPIC)
    assert status == 400 and error["type"] == "error"
    assert error["error"]["message"].startswith("messages: count_tokens measures at most")


async def test_the_admin_token_is_taken_as_bearer_only(gateway):
    gw = await gateway("home", "guest_auth", admin_token=ADMIN)
    client = AsyncHTTPClient()
    url = gw.url + "/v1/token-pool/status"
    refused = await client.fetch(url, headers={"x-api-key": ADMIN}, raise_error=False)
    assert refused.code == 401
    assert "Authorization: Bearer" in json.loads(refused.body)["error"]["message"]
    taken = await client.fetch(url, headers={"Authorization": f"Bearer {ADMIN}"})
    assert taken.code == 200


@pytest.mark.parametrize("over", [1, 2048, 1_000_000])
async def test_a_body_over_the_limit_is_a_json_413(gateway, over):
    gw = await gateway("home", "guest_auth", max_body_bytes=4096)
    body = b'{"model": "GLM-4.5", "messages": []}'.ljust(4096 + over)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    # Only the headers: the answer comes before the body (tornado's was an empty 400).
    reply = await raw_exchange(gw, head)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 "), reply[:300]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert error["error"]["code"] == "payload_too_large"


async def test_expect_100_continue_hears_about_a_bad_key_first(gateway):
    gw = await gateway("home", "guest_auth")
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    reply = await raw_exchange(gw, head)
    assert reply.startswith(b"HTTP/1.1 401 "), reply[:200]
    assert b"100 (Continue)" not in reply
    good = head.replace(b"Bearer wrong", f"Bearer {API_KEY}".encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw))
    writer.write(good)
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100")
    writer.close()
