"""Logging: loguru for everything, one line per request, secrets masked.

Owns ``setup_logging``. Tornado's stdlib loggers are routed into loguru; ``DEBUG_LOGGING``
lowers the level to DEBUG. Secrets are never passed to a log call: code logs
``Credential.masked`` / ``mask()``, and the access line holds no header or query string.
"""

import logging
import sys

from loguru import logger

__all__ = ["setup_logging"]

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


def setup_logging(debug: bool) -> None:
    logger.remove()
    # diagnose=False: a traceback must not print variable values (request bodies, tokens).
    logger.add(
        sys.stderr,
        level="DEBUG" if debug else "INFO",
        format=_FORMAT,
        colorize=None,
        diagnose=False,
    )
    logging.basicConfig(
        handlers=[_ToLoguru()], level=logging.DEBUG if debug else logging.INFO, force=True
    )
    # The access line is written by the gateway itself (server.web.handler), with more in it.
    logging.getLogger("tornado.access").setLevel(logging.CRITICAL)
