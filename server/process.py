"""The gateway as an operating-system process: its file-descriptor limit and, with
``WORKERS`` > 1, the supervisor of its worker processes.

Owns ``raise_fd_limit`` (the soft ``RLIMIT_NOFILE`` up to the hard one at start-up: every
client connection costs a descriptor, and an upstream one while it is served) and
``supervise``, the parent of ``WORKERS`` forked workers. A worker that dies while the gateway
is not stopping is replaced after a back-off (0.5 s doubling, per worker slot, reset once a
worker lived ``STABLE`` seconds); a slot whose workers die ``GIVE_UP`` times in a row within
``STABLE`` seconds of their start means the gateway cannot run: the others are stopped and the
parent exits 1, so a restart policy (systemd, Docker, Kubernetes) takes over. SIGTERM/SIGINT are
forwarded to the workers; the parent exits 0 once they all exited 0 (1 if one did not).
tornado's ``fork_processes`` was not used: it restarts at once with no back-off, forwards no
signal, and exits 0 when every worker is gone.

The parent keeps SIGCHLD, SIGTERM and SIGINT blocked and takes them with ``sigtimedwait``:
one loop, no handler running between two system calls; workers get the old mask back.
"""

import contextlib
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

__all__ = ["GIVE_UP", "STABLE", "raise_fd_limit", "supervise"]

STABLE = 30.0  # seconds a worker must live for its slot's back-off to start over
GIVE_UP = 5  # deaths in a row of one slot, each within STABLE s of its start
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0
_NO_HARD_LIMIT = 1 << 20  # what "unlimited" is raised to (Linux refuses more than nr_open)
_WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; return (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NO_HARD_LIMIT if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the file-descriptor limit from {}: {}", soft, exc)
        return soft, soft
    return soft, target


@dataclass(slots=True)
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0  # deaths in a row, each within STABLE s of the start
    due: float | None = None  # when its next worker starts


def _how(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"


def supervise(count: int, work: Callable[[], None]) -> int:
    """Run ``work`` in ``count`` forked workers until they are stopped; the parent's exit
    status: 0 when every worker exited 0 after SIGTERM/SIGINT, 1 otherwise."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    slots = [_Slot(i) for i in range(count)]

    def spawn(slot: _Slot) -> None:
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            code = 1
            try:
                work()
                code = 0
            except BaseException:
                logger.exception("worker {} failed", slot.index)
            finally:
                os._exit(code)
        slot.pid, slot.started, slot.due = pid, time.monotonic(), None

    def signal_all(signum: int) -> None:
        for slot in slots:
            slot.due = None
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    for slot in slots:
        spawn(slot)
    stopping, status = False, 0
    while True:
        while True:  # reap every worker that ended (one SIGCHLD may stand for several)
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended = next((s for s in slots if s.pid == pid), None)
            if ended is None:
                continue
            slot = ended
            slot.pid, code = 0, os.waitstatus_to_exitcode(raw)
            if stopping:
                status = status or (1 if code else 0)
                continue
            quick = time.monotonic() - slot.started < STABLE
            slot.quick_deaths = slot.quick_deaths + 1 if quick else 1
            if slot.quick_deaths >= GIVE_UP:
                logger.error(
                    "worker {} (pid {}) {}: its {} workers in a row died within {:g} s of "
                    "starting; giving up, stopping the others, exiting 1",
                    slot.index,
                    pid,
                    _how(code),
                    slot.quick_deaths,
                    STABLE,
                )
                stopping, status = True, 1
                signal_all(signal.SIGTERM)
                continue
            delay = min(_BACKOFF_FIRST * 2 ** (slot.quick_deaths - 1), _BACKOFF_MAX)
            slot.due = time.monotonic() + delay
            logger.error(
                "worker {} (pid {}) {}; a new one starts in {:g} s",
                slot.index,
                pid,
                _how(code),
                delay,
            )
        if stopping and not any(slot.pid for slot in slots):
            return status
        now = time.monotonic()
        for slot in slots:
            if slot.due is not None and slot.due <= now:
                spawn(slot)
                logger.info("worker {} started again (pid {})", slot.index, slot.pid)
        dues = [slot.due - now for slot in slots if slot.due is not None]
        info = signal.sigtimedwait(_WATCHED, max(0.01, min([1.0, *dues])))
        if info is not None and info.si_signo != signal.SIGCHLD and not stopping:
            stopping = True
            signal_all(info.si_signo)
        elif info is not None and info.si_signo != signal.SIGCHLD:
            signal_all(info.si_signo)  # a second SIGTERM/SIGINT: pass it on too
