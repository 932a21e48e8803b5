"""A gateway started as a real process by a test, and the environment it gets.

Owns ``gateway_env`` (the test runner's environment without any gateway setting it may carry,
so a developer's own AUTH_TOKEN or REDIS_URL never leaks into a test, plus the given values;
test processes opt out of the one-per-machine lock unless a test is about it) and
``GatewayProcess`` (``python -m server`` on a free loopback port, its log in a file, ready
when ``/readyz`` answers 200, stopped by SIGTERM or SIGKILL). The replica, lifecycle, chat
and descriptor-limit tests all start their gateways with it.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai
from tornado.httpclient import AsyncHTTPClient

from server.settings import Settings
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
_SETTINGS = {name.upper() for name in Settings.model_fields}
API_KEY = "sk-test-0123456789abcdef"  # the suite's client key (tests.conftest.API_KEY)


def gateway_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    env.update(SINGLE_INSTANCE="off", PYTHONPATH=str(ROOT))
    env.update(PACING_MIN_GAP_MS="0", PACING_JITTER_MS="0")  # test_pacing paces on purpose
    env.update(values)
    return env


class GatewayProcess:
    """``python -m server`` with ``AUTH_TOKEN=API_KEY`` on 127.0.0.1 and ``values`` as its
    settings; ``before`` runs in the child before it starts (e.g. a resource limit)."""

    def __init__(
        self,
        log_dir: Path,
        port: int = 0,
        before: Callable[[], None] | None = None,
        **values: str,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"gateway-{self.port}.log"
        env = gateway_env(
            AUTH_TOKEN=API_KEY, LISTEN_HOST="127.0.0.1", LISTEN_PORT=str(self.port), **values
        )
        with self.log_path.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=before,
            )

    def __repr__(self) -> str:
        return f"<GatewayProcess {self.url} pid={self.proc.pid}>"

    async def ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the gateway exited:\n{self.text()[-3000:]}"
            with contextlib.suppress(OSError):
                reply = await AsyncHTTPClient().fetch(self.url + "/readyz", raise_error=False)
                if reply.code == 200:
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"gateway on {self.port} never became ready:\n{self.text()[-3000:]}")

    def client(self, timeout: float = 30) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=timeout
        )

    async def admin(self, path: str, token: str) -> dict:
        reply = await AsyncHTTPClient().fetch(
            self.url + path, headers={"Authorization": f"Bearer {token}"}
        )
        return json.loads(reply.body)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait(self, timeout: float = 30) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.proc.wait, timeout)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` unless it has exited; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        return self.stop(signal.SIGKILL, 10)
