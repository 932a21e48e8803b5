"""The gateway as a process (issue 13 D2, D17): its file-descriptor limit is raised at
start-up, and ``WORKERS`` > 1 as a real process tree: a killed worker is replaced and serves,
workers that keep dying make the parent exit 1, SIGTERM still ends it with 0."""

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.fake_upstream import FakeUpstream
from tests.processes import GatewayProcess
from tests.test_edge import BASE, limited_gateway, nofile_limit
from tests.test_lifecycle import Process


@pytest.fixture
def processes():
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.kill()


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(stat.parent.name))
    return found


def workers(pid: int, not_these: frozenset = frozenset()) -> set[int] | None:
    """The parent's two workers, once there are two and none of them is in ``not_these``."""
    found = children(pid)
    return found if len(found) == 2 and not found & not_these else None


async def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


async def test_the_fd_limit_is_raised_to_the_hard_limit_at_start_up(tmp_path):
    fake = FakeUpstream(*BASE)
    gateway = limited_gateway(tmp_path, await fake.start(), soft=256, hard=4096)
    try:
        await gateway.ready()
        assert nofile_limit(gateway.proc.pid) == (4096, 4096)
    finally:
        gateway.stop()
        await fake.close()


@pytest.mark.timeout(90)
async def test_a_killed_worker_is_replaced_and_serves(tmp_path, processes, real_redis_server):
    fake = FakeUpstream(*BASE)
    gateway = Process(
        tmp_path,
        ZAI_BASE_URL=await fake.start(),
        WORKERS="2",
        REDIS_URL=real_redis_server.url,
        REDIS_PREFIX=f"workers-{uuid.uuid4().hex[:6]}:",
    )
    processes.append(gateway)
    try:
        await gateway.ready()
        first = await wait_for(lambda: workers(gateway.proc.pid), 20, "two workers")
        for pid in first:  # every original worker dies: only replacements can answer
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        now = await wait_for(lambda: workers(gateway.proc.pid, first), 20, "two new workers")
        assert gateway.proc.poll() is None
        await gateway.ready()
        for _ in range(10):  # fresh connections, spread over both by SO_REUSEPORT
            reply = await AsyncHTTPClient(force_instance=True).fetch(gateway.url + "/healthz")
            assert reply.code == 200
        log = gateway.text()
        assert log.count("was killed by SIGKILL; a new one starts in 0.5 s") == 2, log[-2000:]
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.wait() == 0
        assert not children(gateway.proc.pid) and not any(Path(f"/proc/{p}").exists() for p in now)
    finally:
        await fake.close()


@pytest.mark.timeout(90)
async def test_workers_that_keep_dying_make_the_parent_exit_1(
    tmp_path, processes, real_redis_server
):
    # The port is held by a socket without SO_REUSEPORT: every worker fails to bind it.
    fake = FakeUpstream(*BASE)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    gateway = Process(
        tmp_path,
        ZAI_BASE_URL=await fake.start(),
        WORKERS="2",
        REDIS_URL=real_redis_server.url,
        port=holder.getsockname()[1],
    )
    processes.append(gateway)
    try:
        assert await gateway.wait(60) == 1  # it used to exit 0 once both workers were gone
    finally:
        holder.close()
        await fake.close()
    log = gateway.text()
    assert "giving up, stopping the others, exiting 1" in log, log[-2000:]
    assert log.count("a new one starts in") >= 4
