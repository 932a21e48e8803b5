"""Logging: loguru for everything, one line per request, secrets masked.

Owns ``setup_logging`` and ``access``, the one line per request. Tornado's stdlib loggers are
routed into loguru; ``DEBUG_LOGGING`` lowers the level to DEBUG. Secrets are never passed to a
log call: code logs ``Credential.masked`` / ``mask()``, and the access line holds no header or
query string. Once ``setup_logging`` has made stderr (not a terminal) the only sink, the access
line is formatted here, in the sink's own format, and written straight to stderr: loguru built
a whole record for it (the caller's frame, an aware time, the process and thread), 6 % of a
request's CPU in the 12-03 profile. Elsewhere (a terminal, or tests that add sinks) it goes
through loguru like any other line.
"""

import asyncio
import atexit
import logging
import os
import sys
import time

from loguru import logger

__all__ = ["access", "setup_logging"]

_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{process}</cyan> {message}"
)


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


class _Plain:
    """Writes INFO lines as the sink's ``_FORMAT`` does uncoloured, the time's text kept per
    second. The lines of one loop turn leave in one write, at its end; any other line (the
    loguru sink) sends them first, so the order stays."""

    def __init__(self) -> None:
        self.second, self.stamp = -1, ""
        self.pid = os.getpid()
        self.lines: list[str] = []

    def flush(self) -> None:
        if self.lines:
            text = "".join(self.lines)
            self.lines.clear()
            sys.stderr.write(text)

    def sink(self, message: object) -> None:
        self.flush()
        sys.stderr.write(str(message))

    def write(self, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((now - second) * 1000)
        self.lines.append(f"{self.stamp}.{millis:03d} INFO    {self.pid} {message}\n")
        if len(self.lines) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: now
                self.flush()


_plain: _Plain | None = None  # set by setup_logging when stderr is the only sink


def _forked() -> None:
    if _plain is not None:
        _plain.pid = os.getpid()
        _plain.lines.clear()  # the parent's: it writes them


os.register_at_fork(after_in_child=_forked)


@atexit.register
def _exiting() -> None:
    if _plain is not None:
        _plain.flush()


def access(line: str, *args: object) -> None:
    """The access line: ``line.format(*args)`` at INFO."""
    if _plain is not None:
        _plain.write(line.format(*args))
    else:
        logger.opt(depth=1).info(line, *args)


def setup_logging(debug: bool) -> None:
    global _plain
    logger.remove()
    if _plain is not None:
        _plain.flush()
    _plain = None if sys.stderr.isatty() else _Plain()
    # diagnose=False: a traceback must not print variable values (request bodies, tokens).
    logger.add(
        sys.stderr if _plain is None else _plain.sink,
        level="DEBUG" if debug else "INFO",
        format=_FORMAT,
        colorize=None if _plain is None else False,
        diagnose=False,
    )
    logging.basicConfig(
        handlers=[_ToLoguru()], level=logging.DEBUG if debug else logging.INFO, force=True
    )
    # The access line is written by the gateway itself (server.web.handler), with more in it.
    logging.getLogger("tornado.access").setLevel(logging.CRITICAL)
