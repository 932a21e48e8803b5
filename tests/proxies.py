"""Real egress proxies for the tests: Debian's tinyproxy (HTTP CONNECT) and dante (SOCKS5),
each started on a free loopback port and stopped after.

Owns ``Tinyproxy`` and ``Dante``. Each sends its outgoing connections from its own loopback
address (``bind``, e.g. 127.0.0.2), so the fake upstream tells by the source address which
route a request came by, as the real upstream's WAF tells egress IPs apart. The binaries are
apt packages (``.ci/run`` installs them); the fixtures skip, and so fail under ``CI=true``,
when one is missing. Dante checks SOCKS5 credentials (RFC 1929) against the system's password
database only, so a ``Dante`` given a username creates that system user (no home, no shell)
with the password for its life and deletes it after; that needs root, as CI has.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.redis_server import free_port

__all__ = ["Dante", "Tinyproxy"]


def _binary(*candidates: str) -> str:
    for path in candidates:
        if Path(path).is_file() or shutil.which(path):
            return shutil.which(path) or path
    raise FileNotFoundError(f"{candidates[0]} is not installed (see .ci/run)")


class _Proxy:
    scheme = ""

    def __init__(self, bind: str, username: str = "", password: str = "") -> None:
        self.port = free_port()
        self.bind = bind
        self.username, self.password = username, password
        self.dir = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__.lower()}-"))
        os.chmod(self.dir, 0o777)  # both drop root to nobody and must write their logs here
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        who = f"{self.username}:{self.password}@" if self.username else ""
        return f"{self.scheme}://{who}127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "_Proxy":
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command()[0]} exited: {self.log()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.command()[0]} did not start")

    def log(self) -> str:
        file = self.dir / "proxy.log"
        return file.read_text(errors="replace") if file.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Tinyproxy(_Proxy):
    scheme = "http"

    def command(self) -> list[str]:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            f"Bind {self.bind}",
            "Timeout 60",
            f'LogFile "{self.dir}/proxy.log"',
            "LogLevel Info",
            "MaxClients 100",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
        ]
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        if self.username:
            lines.append(f"BasicAuth {self.username} {self.password}")
        config = self.dir / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        return [
            _binary("tinyproxy", "/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"),
            "-d",
            "-c",
            str(config),
        ]


class Dante(_Proxy):
    scheme = "socks5"
    _made_user = False

    def start(self) -> "_Proxy":
        if self.username:
            self._add_user()
        try:
            return super().start()
        except BaseException:
            self._remove_user()
            raise

    def stop(self) -> None:
        super().stop()
        self._remove_user()

    def _add_user(self) -> None:
        if os.geteuid() != 0:
            raise FileNotFoundError("a SOCKS5 proxy with credentials needs root (a system user)")
        tool = _binary("useradd", "/usr/sbin/useradd")
        subprocess.run(
            [tool, "--no-create-home", "--shell", "/usr/sbin/nologin", self.username],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self._made_user = True
        subprocess.run(
            [_binary("chpasswd", "/usr/sbin/chpasswd")],
            input=f"{self.username}:{self.password}\n".encode(),
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def _remove_user(self) -> None:
        if self._made_user:
            tool = _binary("userdel", "/usr/sbin/userdel")
            subprocess.run([tool, self.username], capture_output=True, timeout=30)
            self._made_user = False

    def command(self) -> list[str]:
        lines = [
            f"logoutput: {self.dir}/proxy.log",
            f"internal: 127.0.0.1 port = {self.port}",
            f"external: {self.bind}",
            "clientmethod: none",
            # username: RFC 1929, checked against the system's users (see _add_user)
            f"socksmethod: {'username' if self.username else 'none'}",
        ]
        if os.geteuid() == 0:  # server settings come before the rules
            lines += ["user.privileged: root", "user.unprivileged: nobody"]
        lines += [
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }",
            "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }",
        ]
        config = self.dir / "danted.conf"
        config.write_text("\n".join(lines) + "\n")
        return [_binary("danted", "/usr/sbin/danted"), "-f", str(config), "-N", "1"]
