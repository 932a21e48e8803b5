"""``python -m server``: read the settings, then serve on ``LISTEN_PORT`` with ``WORKERS``
processes.

Owns start-up and shutdown. With ``WORKERS`` > 1 each worker is an independent process that
binds the port with ``SO_REUSEPORT`` (the kernel spreads connections), builds its own
services after the fork; the parent (``server.process.supervise``) forwards SIGTERM/SIGINT
to them, replaces a worker that dies, and exits 1 when they keep dying. ``EVENT_LOOP`` picks
uvloop or the standard asyncio loop. The soft file-descriptor limit is raised to the hard one
first (``server.process.raise_fd_limit``).
"""

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from loguru import logger
from redis.exceptions import RedisError
from tornado.netutil import bind_sockets

from server.app import make_server
from server.banner import banner
from server.logs import setup_logging
from server.ops.tracing import setup_tracing, stop_tracing
from server.process import raise_fd_limit, supervise
from server.services import make_services
from server.settings import Settings, SettingsError, load_settings
from server.uniqueness import InstanceLockError, claim_instance_lock


async def serve(settings: Settings, banner_pipe: int | None = None) -> None:
    sockets = bind_sockets(
        settings.listen_port, settings.listen_host, reuse_port=settings.workers > 1
    )
    setup_tracing(settings)  # after the fork: one exporter thread per worker
    # Taken from the start: a SIGTERM while start-up waits (on Redis, on another replica's
    # key move) ends this worker cleanly after it, not by the signal's default (exit -15).
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    services = make_services(settings)
    await services.start()
    server = make_server(services, xheaders=True)
    # What start-up made (modules, settings, the app, the model tables) lives as long as the
    # process: frozen, the collector's full collections no longer walk it. Measured with
    # gc.callbacks over the benchmark's throughput phase: the collector's time went from
    # 10.7 % to 7.5 % of the worker's CPU (higher thresholds saved no more, with longer pauses).
    gc.freeze()
    server.add_sockets(sockets)
    logger.info(
        "listening on http://{}:{} (upstream {}, {} mode, {} loop)",
        settings.listen_host,
        settings.listen_port,
        settings.zai_base_url,
        "anonymous" if settings.anonymous_mode else "token",
        type(loop).__module__.split(".")[0],
    )
    if banner_pipe is None or _claim(banner_pipe):  # once per start, not once per worker
        try:
            states: list[str] | None = [row.state for row in await services.pool.status()]
        except (RedisError, OSError):
            states = None  # Redis is down at start: say so, serve anyway (it comes back)
        for line in banner(settings, states):
            logger.info(line)
    await stop.wait()
    logger.info(
        "stopping: no new connections; draining {} request(s) for up to {:g} s",
        len(services.active),
        settings.drain_timeout,
    )
    # Whatever hangs below (a peer that never reads, a frozen Redis), the process ends.
    loop.call_later(settings.drain_timeout + _STOP_GRACE, _give_up)
    server.stop()
    ended = await services.drain(settings.drain_timeout)
    if ended:
        logger.warning("drain deadline passed: {} request(s) ended with an error", ended)
    try:
        await asyncio.wait_for(server.close_all_connections(), _STOP_GRACE / 2)
    except TimeoutError:
        logger.warning("some client connections would not close; leaving them")
    await asyncio.wait_for(services.stop(), _STOP_GRACE / 2)
    try:  # sends the spans still queued, off the loop, bounded: a dead collector waits no more
        await asyncio.wait_for(loop.run_in_executor(None, stop_tracing), _STOP_GRACE / 2)
    except TimeoutError:
        logger.warning("the trace collector did not take the last spans in time; leaving them")
    logger.info("stopped")


def _claim(pipe: int) -> bool:
    try:
        return os.read(pipe, 1) == b"1"
    except BlockingIOError:  # another worker took it
        return False


_STOP_GRACE = 10.0  # seconds after the drain deadline before the process gives up


def _give_up() -> None:
    logger.error(
        "shutdown did not finish {:g} s after the drain deadline: exiting now", _STOP_GRACE
    )
    os._exit(1)


Runner = Callable[[Coroutine[Any, Any, None]], None]


def _event_loop(settings: Settings) -> Runner:
    """What runs ``serve``: uvloop runs the same code with a third less CPU per request."""
    if settings.event_loop == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            raise SettingsError("EVENT_LOOP=uvloop, but uvloop is not installed") from None
        return asyncio.run
    return uvloop.run


def _run_workers(settings: Settings, run: Runner) -> int:
    """The parent's exit status: 0 once the workers stopped on SIGTERM, 1 when they kept dying."""
    # One byte in a pipe every worker inherits: the worker that reads it prints the banner, so
    # it appears once per start (a worker started again later finds the pipe empty).
    banner_pipe, write = os.pipe()
    os.set_blocking(banner_pipe, False)
    os.write(write, b"1")
    os.close(write)
    return supervise(settings.workers, lambda: run(serve(settings, banner_pipe)))


def _file_descriptors(settings: Settings) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one; warn when MAX_CONNECTIONS cannot fit."""
    before, now = raise_fd_limit()
    if now != before:
        logger.info("file descriptors: the limit was raised from {} to {}", before, now)
    needed = 2 * settings.max_connections + 64  # a client and an upstream socket each
    if needed > now:
        logger.warning(
            "MAX_CONNECTIONS={} may need {} file descriptors, the limit is {}: past it, new"
            " clients get 503 (raise ulimit -n or lower MAX_CONNECTIONS)",
            settings.max_connections,
            needed,
            now,
        )


def main() -> None:
    try:
        settings = load_settings()
        run = _event_loop(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.debug_logging)
    _file_descriptors(settings)
    try:
        lock = claim_instance_lock(settings)
    except InstanceLockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if settings.workers > 1 and not settings.redis_url:
        logger.warning(
            "WORKERS={} needs a shared Redis (REDIS_URL); running one worker on the embedded store",
            settings.workers,
        )
        settings = settings.model_copy(update={"workers": 1})
    status = 0
    try:
        if settings.workers > 1:
            status = _run_workers(settings, run)
        else:
            run(serve(settings))
    finally:
        if lock is not None:
            lock.close()
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
