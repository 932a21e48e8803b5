"""Tests of the cassette replay server (tests/fake_upstream.py) itself.

Owns proving the fake behaves like a real upstream on a real socket before other tests rely on
it: events arrive one at a time, the random split delivers the same bytes, the play order and
repeat rule hold, ``verify`` rejects a bad signature, and a client hanging up mid-stream is
counted as an aborted stream without tornado logging an uncaught exception.
"""

import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import yaml
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.tcpclient import TCPClient

from server.zai.signature import DEFAULT_KEY, sign
from tests.fake_upstream import CASSETTES, COMPLETIONS, FakeUpstream

TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6InUtMSJ9.fake-signature"


@asynccontextmanager
async def serving(*cassettes, **options):
    fake = FakeUpstream(*cassettes, **options)
    base = await fake.start()
    try:
        yield fake, base
    finally:
        await fake.close()


def recorded_body(name: str) -> bytes:
    data = yaml.safe_load((CASSETTES / f"{name}.yaml").read_text())
    return data["interactions"][0]["response"]["body"]["string"].encode()


def completion(base: str, prompt: str = "hi", signature: str | None = None, **fetch) -> dict:
    """fetch() arguments for a completion request signed like the web app signs it."""
    ts, request_id = int(time.time() * 1000), str(uuid.uuid4())
    query = {
        "timestamp": ts,
        "requestId": request_id,
        "user_id": "u-1",
        "version": "0.0.1",
        "platform": "web",
        "token": TOKEN,
        "signature_timestamp": ts,
    }
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-FE-Version": "prod-fe-1.1.95",
        "Content-Type": "application/json",
        "X-Signature": signature or sign(DEFAULT_KEY, request_id, ts, "u-1", prompt),
    }
    body = json.dumps(
        {
            "stream": True,
            "signature_prompt": prompt,
            "messages": [{"role": "user", "content": prompt}],
        }
    )
    return {
        "request": f"{base}{COMPLETIONS}?{urlencode(query)}",
        "method": "POST",
        "headers": headers,
        "body": body,
        **fetch,
    }


async def test_events_arrive_one_at_a_time(io_loop):
    chunks = []
    async with serving("stream_glm5_plain_thinking", pace=0.005, verify=False) as (fake, base):
        await AsyncHTTPClient().fetch(**completion(base, streaming_callback=chunks.append))
        assert fake.streams_completed == 1
    expected = recorded_body("stream_glm5_plain_thinking")
    assert b"".join(chunks) == expected
    assert len(chunks) == expected.count(b"\n\n") == 45
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)


async def test_random_split_delivers_the_same_bytes(io_loop):
    name = "stream_glm46v_details_glmblock"
    chunks = []
    async with serving(name, split="random", pace=0.001, verify=False) as (_, base):
        await AsyncHTTPClient().fetch(**completion(base, streaming_callback=chunks.append))
    expected = recorded_body(name)
    assert b"".join(chunks) == expected
    assert len(chunks) > 2 * expected.count(b"\n\n")
    assert max(len(c) for c in chunks) <= 64
    broken = sum(1 for c in chunks if c.decode("utf-8", "replace") != c.decode("utf-8", "ignore"))
    assert broken, "no chunk boundary fell inside a multi-byte UTF-8 character"


async def test_play_order_then_last_one_repeats(io_loop):
    client = AsyncHTTPClient()
    async with serving(
        "home", "guest_auth", "error_http_426", "stream_glm5_plain_thinking", verify=False
    ) as (fake, base):
        codes = []
        for _ in range(3):
            response = await client.fetch(**completion(base, raise_error=False))
            codes.append(response.code)
        home = await client.fetch(f"{base}/?x=1")
        auth = await client.fetch(f"{base}/api/v1/auths/?random=1")
        assert codes == [426, 200, 200]
        assert b"prod-fe-1.1.95" in home.body
        assert json.loads(auth.body)["role"] == "guest"
        assert fake.streams_completed == 2
        assert [s.path for s in fake.requests][-2:] == ["/", "/api/v1/auths/"]
        assert fake.requests[0].query["user_id"] == "u-1"


async def test_verify_checks_the_signature(io_loop):
    client = AsyncHTTPClient()
    async with serving("home", "stream_glm5_plain_thinking") as (fake, base):
        try:
            await client.fetch(**completion(base, signature="0" * 64))
        except HTTPClientError as error:
            assert error.code == 400
            assert json.loads(error.response.body) == {
                "detail": "403: Signature validation failed: 签名验证失败"
            }
        else:
            raise AssertionError("a bad signature was accepted")
        stale = completion(base)
        stale["headers"]["X-FE-Version"] = "prod-fe-1.0.70"
        assert (await client.fetch(**stale, raise_error=False)).code == 426
        good = await client.fetch(**completion(base, prompt="Reply with exactly: ok"))
        assert good.code == 200 and good.body.endswith(b'"done":true}}\n\n')
        assert fake.requests[-1].headers["x-signature"] == fake.requests[-1].headers["X-Signature"]


async def test_client_hanging_up_mid_stream_is_counted(io_loop, caplog):
    caplog.set_level(logging.WARNING)
    async with serving("stream_glm46_details_thinking", pace=0.01, verify=False) as (fake, base):
        port = int(base.rsplit(":", 1)[1])
        stream = await TCPClient().connect("127.0.0.1", port)
        await stream.write(
            f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await stream.read_until(b"\n\n")
        await stream.read_until(b"\n\n")
        stream.close()
        await fake.wait_aborted(1, timeout=5)
        assert (fake.streams_aborted, fake.streams_completed) == (1, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
