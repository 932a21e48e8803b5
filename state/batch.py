"""Writes that need not hold up a request, and the scripts a request waits on, sent to Redis
together.

Owns ``WriteBehind`` and ``evalsha``. A successful lease's release, a throwaway chat written
down or struck out: each is a write the request never waits on, and each would cost a round
trip of its own. ``add`` queues one (a function that puts its commands on a pipeline) and
answers a future; everything queued while the event loop turns goes in ONE
non-transactional pipeline (one round trip), and the future settles when Redis has answered
(with the error if it failed, so the caller can mark what is left undone). ``run`` queues
scripts a request does wait on (the token pick, with a client key's check before it) the
same way and answers their replies: under load, the picks of many requests and the releases
of the ones before them share a round trip and redis-py's cost per call (a connection taken
from its pool, a retry wrapper and a timeout each: two thirds of a lone pick's CPU), and a
kept-alive client's next pick goes behind its previous release, never past it. Batches go
one at a time, in order (a chat struck out is never struck before it was written down).
Scripts go in with ``EVALSHA`` alone: redis-py's pipelines would ask ``SCRIPT EXISTS``
first, a second round trip per batch; a Redis that lost its scripts (restarted, failed over)
answers NOSCRIPT, and those entries are sent once more with the scripts loaded. On a Redis
Cluster, whose redis-py pipeline refuses ``EVALSHA``, the entries are sent at once side by
side (each one's commands in order) instead of in one pipeline: the same futures and
NOSCRIPT handling, a round trip per command.
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["Call", "WriteBehind", "evalsha"]

Build = Callable[[Pipeline], None]
Call = tuple[AsyncScript, Sequence[str], Sequence[Any]]  # a script, its KEYS[] and ARGV[]
_Recorded = tuple[str, tuple[Any, ...], dict[str, Any]]  # a pipeline method, args, kwargs
# What is queued: its build, its future, and whether it hears its replies with each error in
# place (``run``) rather than fail as a whole on the first (``add``).
_Entry = tuple[Build, "asyncio.Future[list[Any]]", bool]


def evalsha(pipe: Pipeline, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe`` by its digest only (see the module docstring)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


class _Calls:
    """Stands in for a pipeline: records what a build puts on it, to be sent one by one."""

    def __init__(self) -> None:
        self.calls: list[_Recorded] = []

    def __len__(self) -> int:
        return len(self.calls)

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record


class WriteBehind:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._queued: list[_Entry] = []
        self._flushing: asyncio.Task[None] | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def __repr__(self) -> str:
        return f"<WriteBehind queued={len(self._queued)}>"

    def uses(self, *scripts: AsyncScript) -> None:
        """Scripts that entries send with ``evalsha``: loaded again on NOSCRIPT."""
        self._scripts.update((script.sha, script) for script in scripts)

    def add(self, build: Build, whole: bool = False) -> "asyncio.Future[list[Any]]":
        """Queue ``build``'s commands for the next batch; the future answers their replies
        (``whole``: each error reply in its place; else the first error fails the future)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((build, future, whole))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        return future

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` (scripts) in the next batch and answer each one's reply in order, an
        error reply as its exception."""
        for script, _, _ in calls:
            self._scripts[script.sha] = script

        def build(pipe: Pipeline) -> None:
            for script, keys, args in calls:
                evalsha(pipe, script, keys, args)

        return await self.add(build, whole=True)

    async def flush(self) -> None:
        """Wait until everything queued so far has been answered (at shutdown)."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # what this loop turn queues joins the batch
        batch, self._queued = self._queued, []
        try:
            again = await self._send(batch)
            if again:
                for script in self._scripts.values():
                    await self.redis.script_load(script.script)
                await self._send(again, last=True)
        except Exception as exc:  # Redis unreachable, timed out: nothing was confirmed
            _fail(batch, exc)
        except asyncio.CancelledError:  # stopped mid-flight: nor was anything here
            _fail(batch, asyncio.CancelledError("cancelled before Redis answered"))
            raise
        finally:
            self._flushing = None
            if self._queued:  # queued while this batch was in flight
                self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _send(self, batch: list[_Entry], last: bool = False) -> list[_Entry]:
        """Send one pipeline; settle each entry's future; answer the entries that met
        NOSCRIPT (to send again), unless this is the ``last`` try."""
        spans = []
        if isinstance(self.redis, RedisCluster):
            replies = await self._send_apart(batch, spans)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for build, _, _ in batch:
                    start = len(pipe)
                    build(pipe)
                    spans.append((start, len(pipe)))
                replies = await pipe.execute(raise_on_error=False)
        again = []
        for entry, (start, end) in zip(batch, spans, strict=True):
            build, future, whole = entry
            replies_here = replies[start:end]
            errors = [r for r in replies_here if isinstance(r, Exception)]
            if not last and any(isinstance(e, NoScriptError) for e in errors):
                again.append(entry)
            elif future.done():  # its caller stopped waiting (a hung-up client's pick)
                pass
            elif errors and not whole:
                future.set_exception(errors[0])
            else:
                future.set_result(replies_here)
        return again

    async def _send_apart(self, batch: list[_Entry], spans: list[tuple[int, int]]) -> list[object]:
        """Every entry at once, each one's commands in order; replies (or errors) in order."""
        entries = []
        for build, _, _ in batch:
            calls = _Calls()
            build(cast(Pipeline, calls))
            start = spans[-1][1] if spans else 0
            spans.append((start, start + len(calls)))
            entries.append(calls.calls)

        async def send(calls: list[_Recorded]) -> list[object]:
            replies: list[object] = []
            for name, args, kwargs in calls:
                try:
                    replies.append(await getattr(self.redis, name)(*args, **kwargs))
                except Exception as exc:
                    replies.append(exc)
            return replies

        answered = await asyncio.gather(*(send(calls) for calls in entries))
        return [reply for replies in answered for reply in replies]


def _fail(batch: list[_Entry], exc: BaseException) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(exc)
