"""A real nginx for the tests, running ``deploy/nginx.conf`` with only its ports replaced.

Owns ``Nginx``: it renders the committed example config for one loopback listen port and the
given replica ports (``render``), starts ``nginx -p <tmp> -c <tmp>/nginx.conf`` in the
foreground with its pid file and logs in that temporary prefix (it never touches a system
nginx), waits until it accepts connections, and stops it with SIGTERM then SIGKILL.
CI installs Debian's nginx (``.ci/run``); without it the tests skip, which fails under
``CI=true``.
"""

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.processes import ROOT
from tests.redis_server import free_port

CONFIG = ROOT / "deploy" / "nginx.conf"
REPLICA_LINE = re.compile(r"server 127\.0\.0\.1:\d+ ")
LISTEN_LINE = "listen 8080;"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None  # not on PATH


def render(config: str, port: int, replicas: list[int]) -> str:
    """The config with the listen port and one upstream line per replica port."""
    lines = config.splitlines(keepends=True)
    upstream = [i for i, line in enumerate(lines) if REPLICA_LINE.search(line)]
    if not upstream or config.count(LISTEN_LINE) != 1:
        raise ValueError("deploy/nginx.conf no longer has the lines the test replaces")
    template = lines[upstream[0]]
    ours = [REPLICA_LINE.sub(f"server 127.0.0.1:{p} ", template) for p in replicas]
    lines[upstream[0] : upstream[-1] + 1] = ours
    return "".join(lines).replace(LISTEN_LINE, f"listen 127.0.0.1:{port};")


class Nginx:
    def __init__(self, prefix: Path, replicas: list[int], config: str | None = None) -> None:
        self.port = free_port()
        self.prefix = prefix
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(render(config or CONFIG.read_text(), self.port, replicas))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, binary: str) -> "Nginx":
        self.log = open(self.prefix / "logs" / "stderr.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                "-p",
                str(self.prefix),
                "-c",
                str(self.conf),
                "-e",
                "stderr",  # the error log before the config is read (not /var/log/nginx)
                "-g",
                f"daemon off; pid {self.prefix / 'nginx.pid'};",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start:\n{self.errors()}")

    def errors(self) -> str:
        self.log.flush()
        return (self.prefix / "logs" / "stderr.log").read_text(errors="replace")[-3000:]

    def access(self) -> list[str]:
        path = self.prefix / "logs" / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast: open streams are cut
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self.log.close()
