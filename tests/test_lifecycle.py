"""A gateway process's life: draining on SIGTERM, and one per service name per machine."""

import asyncio
import signal
import tempfile
import time
import uuid
from pathlib import Path

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient

from server.services import make_services
from server.settings import load_settings
from state.keys import Keys
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream
from tests.processes import GatewayProcess


def Process(tmp_path: Path, port: int = 0, **values: str) -> GatewayProcess:
    return GatewayProcess(tmp_path, port, GUEST_RESERVE="0", **values)


@pytest.fixture
def processes():
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.kill()


async def open_streams(gateway: GatewayProcess, n: int) -> list:
    streams = []
    for _ in range(n):
        client = gateway.client()
        stream = await client.chat.completions.create(
            model="GLM-4.5", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        first = await stream.__anext__()
        assert first.choices[0].delta.role == "assistant"
        streams.append((client, stream))
    return streams


async def read_rest(client, stream) -> tuple[str, object]:
    text, error = "", None
    try:
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                if chunk.choices[0].finish_reason:
                    text += f"|{chunk.choices[0].finish_reason}"
    except openai.APIError as exc:
        error = exc
    await client.close()
    return text, error


@pytest.mark.timeout(60)
async def test_sigterm_drains_streams_then_exits_0(tmp_path, processes, real_redis_server):
    fake = FakeUpstream("home", "guest_auth", "stream_glm5_plain_thinking", pace=0.05)
    prefix = f"drain-{uuid.uuid4().hex[:6]}:"
    keys = Keys(prefix)
    gateway = Process(
        tmp_path,
        ZAI_BASE_URL=await fake.start(),
        DRAIN_TIMEOUT="20",
        REDIS_URL=real_redis_server.url,
        REDIS_PREFIX=prefix,
    )
    processes.append(gateway)
    try:
        await gateway.ready()
        assert real_redis_server.cli("ZCARD", keys.instances).strip() == "1"
        streams = await open_streams(gateway, 3)
        gateway.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(OSError):  # no new connections once it is stopping
            await AsyncHTTPClient().fetch(gateway.url + "/readyz")
        results = await asyncio.gather(*(read_rest(c, s) for c, s in streams))
        assert await gateway.wait() == 0
    finally:
        await fake.close()
    for text, error in results:
        assert error is None and text.endswith("discuss?|stop")
    assert fake.streams_completed == 3
    assert real_redis_server.cli("ZCARD", keys.instances).strip() == "0"
    assert real_redis_server.cli("KEYS", keys.instance("*")).split() == []
    assert "drain deadline passed" not in gateway.text()


@pytest.mark.timeout(60)
async def test_stream_longer_than_the_deadline_ends_with_an_error_event(tmp_path, processes):
    fake = FakeUpstream("home", "guest_auth", "stream_glm5_plain_thinking", pace=0.3)
    gateway = Process(tmp_path, ZAI_BASE_URL=await fake.start(), DRAIN_TIMEOUT="1")
    processes.append(gateway)
    try:
        await gateway.ready()
        ((client, stream),) = await open_streams(gateway, 1)
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        text, error = await read_rest(client, stream)
        assert await gateway.wait() == 0
        assert time.monotonic() - started < 8
    finally:
        await fake.close()
    assert isinstance(error, openai.APIError) and "shutting down" in error.message
    assert "|stop" not in text
    assert "drain deadline passed: 1 request(s)" in gateway.text()


async def test_a_second_start_with_the_same_service_name_refuses(tmp_path, processes):
    name = f"zai-test-{uuid.uuid4().hex[:8]}"
    lock = Path(tempfile.gettempdir()) / f"{name}.lock"
    lock.write_text("999999")  # a crashed run's leftover: stale, to be taken over
    first = Process(
        tmp_path, SERVICE_NAME=name, SINGLE_INSTANCE="on", ZAI_BASE_URL="http://127.0.0.1:9"
    )
    processes.append(first)
    await first.ready()
    assert "stale lock" in first.text() and lock.read_text() == str(first.proc.pid)
    second = Process(
        tmp_path, SERVICE_NAME=name, SINGLE_INSTANCE="on", ZAI_BASE_URL="http://127.0.0.1:9"
    )
    processes.append(second)
    assert await second.wait() == 1
    message = second.text().strip().splitlines()[-1]
    assert "already running" in message and str(first.proc.pid) in message
    third = Process(
        tmp_path,
        SERVICE_NAME=name,
        SINGLE_INSTANCE="auto",
        KUBERNETES_SERVICE_HOST="10.0.0.1",
        ZAI_BASE_URL="http://127.0.0.1:9",
    )
    processes.append(third)
    await third.ready()  # inside a container the check is off by default
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait() == 0
    lock.unlink(missing_ok=True)


@pytest.mark.parametrize("store", ["embedded", "real"])
async def test_stop_ends_the_upkeep_even_when_a_redis_call_swallows_the_cancel(request, store):
    # On Python 3.11 redis-py's send (asyncio.wait_for) loses a cancel that lands a few loop
    # turns into a command; the upkeep then ran on and stop() waited for it for ever.
    url = request.getfixturevalue("real_redis_server").url if store == "real" else ""
    for turns in range(8):
        settings = load_settings(
            _env_file=None,
            auth_token=API_KEY,
            redis_url=url,
            redis_prefix=f"stop-{uuid.uuid4().hex[:6]}:",
            anonymous_mode=False,
            zai_base_url="http://127.0.0.1:9",
            instance_ttl=0.03,  # a heartbeat every 10 ms
        )
        services = make_services(settings)
        began = asyncio.Event()
        heartbeat = services.instances.heartbeat

        async def watched(inflight: int, heartbeat=heartbeat, began=began) -> None:
            began.set()
            await heartbeat(inflight)

        services.instances.heartbeat = watched
        await services.start()
        began.clear()
        await began.wait()  # the upkeep is inside a heartbeat's Redis command
        for _ in range(turns):
            await asyncio.sleep(0)
        stopping = asyncio.ensure_future(services.stop())
        done, _ = await asyncio.wait([stopping], timeout=5)
        assert done, f"stop() hung: its cancel landed {turns} loop turns into a heartbeat"
        assert all(task.done() for task in services.upkeep.tasks)
