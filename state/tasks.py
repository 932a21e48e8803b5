"""Stopping background tasks for sure, and within a bound.

Owns ``stop_tasks``. One ``cancel()`` is not enough to end a loop that talks to Redis: on
Python 3.11, redis-py sends every command through ``asyncio.wait_for(..., socket_timeout)``,
and that ``wait_for`` swallows a cancel arriving in the loop turns after the send finished
(the inner send is done, so it returns its result instead of raising; Python 3.12 fixed
``wait_for``). The task then carries on as if nothing happened and a plain ``gather`` on it
waits for ever: measured, a heartbeat pipeline cancelled two to four loop turns after it
began lost the cancel every time, and the gateway's shutdown hung. So a task that is still
running is cancelled again until it ends (the next await it reaches raises), and one that
still will not end within ``within`` seconds is left behind with a warning: stopping never
blocks on a background task.
"""

import asyncio
from collections.abc import Iterable
from typing import Any

from loguru import logger

__all__ = ["stop_tasks"]

_AGAIN_EVERY = 0.02  # seconds between cancels of a task that swallowed the last one


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]], within: float = 2.0) -> None:
    """Cancel ``tasks`` and wait until they have ended, re-cancelling any that swallowed the
    cancel, for at most ``within`` seconds."""
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    left = {task for task in tasks if not task.done()}
    while left:
        for task in left:
            task.cancel()
        wait = min(_AGAIN_EVERY, until - loop.time())
        if wait <= 0:
            logger.warning("{} background task(s) did not stop: left behind", len(left))
            return
        _, left = await asyncio.wait(left, timeout=wait)
    for task in tasks:  # read their outcomes: no "exception was never retrieved" later
        if task.done() and not task.cancelled():
            task.exception()
