"""A real Redis Sentinel set for the tests: a master, a replica and three sentinels, each a
``redis-server`` process on a free loopback port, stopped after.

Owns ``SentinelSet``. ``url`` is the gateway's ``REDIS_URL`` for it
(``redis+sentinel://...``); ``kill_master`` SIGKILLs the master and ``wait_failover``
returns once the sentinels name the replica as the new master. With ``tls`` every process
(master, replica, sentinels) listens on TLS only and ``url`` is ``rediss+sentinel://``.
"""

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.redis_server import RedisServer, Tls, cli_reply, free_port

SERVICE = "gw"


class SentinelSet:
    def __init__(
        self, down_after_ms: int = 500, binary: str | None = None, tls: Tls | None = None
    ) -> None:
        self.down_after_ms = down_after_ms
        self.tls = tls
        self.master = RedisServer(binary, tls=tls)
        self.replica = RedisServer(binary, tls=tls)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-"))
        self.sentinels: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{'rediss' if self.tls else 'redis'}+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> "SentinelSet":
        self.master.start()
        self.replica.start()
        self.replica.cli("REPLICAOF", "127.0.0.1", str(self.master.port))
        binary = self.master.binary  # the packaged valkey-server first, as for the others
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                self._listen(port) + f"bind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self._wait(lambda: self.synced() and self.sentinels_see_each_other(), "set-up")
        return self

    def _listen(self, port: int) -> str:
        if self.tls is None:
            return f"port {port}\n"
        args = iter(self.tls.server_args())  # the server's --name value pairs, as lines
        pairs = zip(args, args, strict=True)
        lines = "".join(f"{name.removeprefix('--')} {value}\n" for name, value in pairs)
        return f"port 0\ntls-port {port}\n{lines}"

    def sentinel_cli(self, *args: str, port: int | None = None) -> str:
        return cli_reply(port or self.sentinel_ports[0], *args, tls=self.tls)

    def master_port(self) -> int:
        reply = self.sentinel_cli("SENTINEL", "get-master-addr-by-name", SERVICE).split()
        return int(reply[1]) if len(reply) == 2 else 0

    def synced(self) -> bool:
        info = self.replica.cli("INFO", "replication")
        return "master_link_status:up" in info

    def sentinels_see_each_other(self) -> bool:
        for port in self.sentinel_ports:
            reply = self.sentinel_cli("SENTINEL", "master", SERVICE, port=port).split()
            fields = dict(zip(reply[::2], reply[1::2], strict=False))
            if fields.get("num-other-sentinels") != "2" or fields.get("num-slaves") != "1":
                return False
        return True

    def kill_master(self) -> None:
        assert self.master.proc is not None
        self.master.proc.send_signal(signal.SIGKILL)
        self.master.proc.wait(10)
        self.master.proc = None

    def wait_failover(self, timeout: float = 30) -> float:
        started = time.monotonic()
        self._wait(lambda: self.master_port() == self.replica.port, "failover", timeout)
        return time.monotonic() - started

    def _wait(self, ready, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"sentinel {what} did not happen in {timeout} s")

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
        for proc in self.sentinels:
            proc.wait(10)
        self.sentinels = []
        self.master.stop()
        self.replica.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
