"""The benchmark's processes: start them pinned, watch them through /proc, stop them all.

Owns ``Processes`` (every child the benchmark starts: each pinned to its cores with
``sched_setaffinity``, which is what ``taskset -c`` does, in its own session, told to die with
the benchmark by ``PR_SET_PDEATHSIG``; ``stop_all()`` ends them, SIGTERM then SIGKILL),
``cpu_seconds``/``rss_kib`` (from ``/proc/<pid>/stat`` utime+stime and ``/proc/<pid>/status``)
and ``RedisProbe`` (a blocking RESP connection: ``INFO stats commandstats``, ``LLEN``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.redis_server import default_binary

__all__ = [
    "Processes",
    "RedisCounters",
    "RedisProbe",
    "calibrate",
    "cpu0_steal",
    "cpu_seconds",
    "descendants",
    "free_port",
    "http_get",
    "rss_kib",
    "source_digest",
]

_TICK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pin_and_tie(cpus: set[int] | None) -> None:
    """Runs in the child between fork and exec."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Every child the benchmark started, so none outlives it.

    >>> procs = Processes(log_dir)
    >>> fake = procs.start("fake", [python, "-m", "scripts.bench.fake"], cpus={1})
    >>> procs.stop(fake); procs.stop_all()
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[int, tuple[str, subprocess.Popen]] = {}
        self.log_offsets: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<Processes {[name for name, _ in self.children.values()]}>"

    def start(
        self,
        name: str,
        argv: list[str],
        cpus: set[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            start_new_session=True,
            preexec_fn=lambda: _pin_and_tie(cpus),
        )
        log.close()
        self.children[proc.pid] = (name, proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL the whole session."""
        self.children.pop(proc.pid, None)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # A worker a gateway parent forked must not outlive it either.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.children.values())):
            self.stop(proc, grace=5.0)

    def new_warnings(self, name: str) -> dict[str, int]:
        """WARNING and ERROR lines written to ``name``'s log since the last call, counted by
        message (numbers and request ids masked, so repeats group together)."""
        path = self.log_dir / f"{name}.log"
        if not path.is_file():
            return {}
        with path.open("rb") as log:
            log.seek(self.log_offsets.get(name, 0))
            data = log.read()
        self.log_offsets[name] = self.log_offsets.get(name, 0) + len(data)
        found: dict[str, int] = {}
        for line in data.decode(errors="replace").splitlines():
            level = re.search(r" (WARNING|ERROR|CRITICAL) +\d+ (.*)", line)
            if level:
                text = re.sub(r"\b[0-9a-f]{12}\b|\d+(\.\d+)?", "#", level[2])[:160]
                key = f"{level[1]}: {text}"
                found[key] = found.get(key, 0) + 1
        return found

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a WORKERS=N gateway forks its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICK


def rss_kib(pids: list[int], field_name: str = "VmRSS") -> int:
    """Resident set size (``VmRSS``) or its peak (``VmHWM``), summed, in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking GET on 127.0.0.1 (readiness checks, the fake's counters)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body


def _unchunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        if size == 0:
            return out
        out += data[end + 2 : end + 2 + size]
        pos = end + 4 + size


@dataclass
class RedisCounters:
    """One reading of ``INFO stats commandstats``."""

    reads: int  # total_reads_processed: socket reads, one per client round trip
    commands: int  # total_commands_processed: includes the commands Lua scripts call
    per_command: dict[str, int] = field(default_factory=dict)

    def minus(self, earlier: RedisCounters) -> RedisCounters:
        """What happened between two readings, less the probe's own INFO."""
        names = set(self.per_command) | set(earlier.per_command)
        per = {n: self.per_command.get(n, 0) - earlier.per_command.get(n, 0) for n in names}
        per.pop("info", None)
        return RedisCounters(
            self.reads - earlier.reads - 1,
            self.commands - earlier.commands - 1,
            {n: v for n, v in per.items() if v},
        )


class RedisProbe:
    """A tiny blocking Redis client for the benchmark's own readings."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def __repr__(self) -> str:
        return f"<RedisProbe {self.sock.getpeername()}>"

    def command(self, *args: str) -> bytes | int:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> bytes | int:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return b""
            data = self._exact(size + 2)
            return data[:-2]
        if kind == b"+":
            return rest
        raise RuntimeError(f"redis said {line!r}")

    def _line(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            data += self.sock.recv(1)
        return data[:-2]

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            data += self.sock.recv(size - len(data))
        return data

    def counters(self) -> RedisCounters:
        text = self.command("INFO", "stats", "commandstats")
        assert isinstance(text, bytes)
        values, per = {}, {}
        for line in text.decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[len("cmdstat_") :].partition(":")
                per[name] = int(rest.split(",")[0].split("=")[1])
            elif ":" in line:
                key, _, value = line.partition(":")
                values[key] = value
        return RedisCounters(
            int(values["total_reads_processed"]), int(values["total_commands_processed"]), per
        )

    def close(self) -> None:
        self.sock.close()


def redis_argv(port: int, workdir: Path) -> list[str]:
    return [
        default_binary(),  # the packaged valkey-server first, as the suite does
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
    ]


def wait_until(
    what: str, ready: Callable[[], object], timeout: float, proc: subprocess.Popen
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, ValueError, IndexError):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within {timeout:g} s")


def cpu0_steal() -> tuple[int, int]:
    """CPU 0's (steal, all) ticks from /proc/stat: time the hypervisor ran something else."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu0 "):
            ticks = [int(x) for x in line.split()[1:]]
            return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])
    return 0, 0


_CALIBRATE = (
    "import time\nt=time.process_time()\nsum(i*i for i in range(2_000_000))\n"
    "print(round((time.process_time()-t)*1000,1))"
)


def calibrate(cpus: set[int]) -> float:
    """Milliseconds of CPU a fixed pure-Python loop takes on ``cpus``. On a shared virtual
    machine this drifts (by +-30 % here): the same number in two runs means the machine was
    as fast; a different one explains different results."""
    done = subprocess.run(
        [sys.executable, "-c", _CALIBRATE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    return float(done.stdout.strip())


def source_digest(root: Path) -> str:
    """SHA-256 over the gateway's source (server/, state/), to tell which code was measured."""
    digest = hashlib.sha256()
    for path in sorted([*root.glob("server/**/*.py"), *root.glob("state/**/*.py")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
