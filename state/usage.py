"""Usage per client key, per model, per UTC day, in Redis.

Owns ``UsageLog``. ``add`` counts one answered request in this process's memory (no round
trip on the request path); ``flush`` writes what was counted to Redis in one pipelined round
trip (``HINCRBY`` on ``<p>{k:<id>}:usage:<yyyymmdd>``, fields ``<model>:requests``,
``:input``, ``:output``, ``:errors``), which the services run every ``USAGE_FLUSH_INTERVAL``
seconds and once more on shutdown. So a process killed with SIGKILL loses at most that
interval of counts; limits never depend on these counters (they live in ``state.client_keys``).
Day hashes expire after ``USAGE_RETENTION_DAYS``. ``query`` reads a range of days back,
grouped by any of key, model and day. Only counts are stored: never prompt or answer text.
``observe`` counts completions of all keys per minute (requests, errors, the sum of times to
first byte) into ``<p>traffic:<yyyymmddHHMM>``, written by the same flush and kept two hours,
which the dashboard draws with ``last_hour``.
"""

import datetime as dt
import time
from collections import defaultdict
from typing import Any, cast

from redis.asyncio import Redis

from state.connection import Fields
from state.keys import Keys

__all__ = ["FIELDS", "GROUPS", "UsageLog"]

FIELDS = ("requests", "input", "output", "errors")
GROUPS = ("key", "model", "day")
MAX_DAYS = 400  # one query reads at most this many days per key
_TRAFFIC_SECONDS = 2 * 3600


class _UtcClock:
    """The UTC day and minute as the counts' keys write them, made again once a minute (two
    datetime objects and two strftime per request were 1 % of a request's CPU)."""

    def __init__(self) -> None:
        self._at = -1
        self._day = self._minute = ""

    def _now(self) -> None:
        at = int(time.time()) // 60
        if at != self._at:
            self._at = at
            moment = time.gmtime(at * 60)
            self._day = time.strftime("%Y%m%d", moment)
            self._minute = time.strftime("%Y%m%d%H%M", moment)

    def day(self) -> str:
        self._now()
        return self._day

    def minute(self) -> str:
        self._now()
        return self._minute


class UsageLog:
    def __init__(self, redis: Redis, keys: Keys, retention_days: int) -> None:
        self.redis = redis
        self.keys = keys
        self.retention = retention_days * 86400
        self._counts: defaultdict[tuple[str, str, str], list[int]] = defaultdict(
            lambda: [0, 0, 0, 0]
        )
        self._names: dict[str, str] = {}
        self._traffic: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._clock = _UtcClock()

    def __repr__(self) -> str:
        return f"<UsageLog pending={len(self._counts)}>"

    def add(
        self, kid: str, name: str, model: str, input_tokens: int, output_tokens: int, error: bool
    ) -> None:
        counts = self._counts[(kid, self._clock.day(), model)]
        counts[0] += 1
        counts[1] += input_tokens
        counts[2] += output_tokens
        counts[3] += int(error)
        self._names[kid] = name

    def observe(self, error: bool, ttfb_ms: float) -> None:
        """One completion answered (any key), for the per-minute traffic."""
        counts = self._traffic[self._clock.minute()]
        counts[0] += 1
        counts[1] += int(error)
        counts[2] += round(ttfb_ms * 1000)  # microseconds: integers add up exactly

    async def flush(self) -> int:
        """Write what was counted since the last flush; returns how many rows. If Redis
        fails, the counts are kept for the next flush (and the error raised)."""
        counts, names, traffic = self._counts, self._names, self._traffic
        if not counts and not traffic:
            return 0
        self._counts = defaultdict(lambda: [0, 0, 0, 0])
        self._names = {}
        self._traffic = defaultdict(lambda: [0, 0, 0])
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for minute, (requests, errors, ttfb_us) in traffic.items():
                    key = self.keys.traffic(minute)
                    pipe.hincrby(key, "requests", requests)
                    pipe.hincrby(key, "errors", errors)
                    pipe.hincrby(key, "ttfb_us", ttfb_us)
                    pipe.expire(key, _TRAFFIC_SECONDS)
                for (kid, day, model), values in counts.items():
                    key = self.keys.usage(kid, day)
                    for field, value in zip(FIELDS, values, strict=True):
                        if value:
                            pipe.hincrby(key, f"{model}:{field}", value)
                    pipe.expire(key, self.retention)
                if names:
                    pipe.hset(self.keys.usage_keys, mapping=cast(Fields, names))
                await pipe.execute()
        except BaseException:
            for kept, lost in ((self._counts, counts), (self._traffic, traffic)):
                for row, values in lost.items():
                    mine = kept[row]  # type: ignore[index]
                    for i, value in enumerate(values):
                        mine[i] += value
            self._names = {**names, **self._names}
            raise
        return len(counts) + len(traffic)

    async def last_hour(self) -> dict[str, list[str] | list[int] | list[float]]:
        """The last 60 minutes (UTC, oldest first): requests, errors, mean time to first
        byte in ms, across every process that flushed."""
        now = int(time.time()) // 60 * 60
        minutes = [time.gmtime(now - 60 * i) for i in range(59, -1, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hmget(
                    self.keys.traffic(time.strftime("%Y%m%d%H%M", minute)),
                    "requests",
                    "errors",
                    "ttfb_us",
                )
            rows = await pipe.execute()
        requests = [int(row[0] or 0) for row in rows]
        return {
            "minutes": [time.strftime("%H:%M", minute) for minute in minutes],
            "requests": requests,
            "errors": [int(row[1] or 0) for row in rows],
            "ttfb_ms": [
                round(int(row[2] or 0) / 1000 / n, 1) if n else 0
                for row, n in zip(rows, requests, strict=True)
            ],
        }

    async def names(self) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(self.keys.usage_keys))

    async def query(
        self, kids: list[str] | None, first: dt.date, last: dt.date, group_by: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        """Rows of ``requests``, ``input_tokens``, ``output_tokens``, ``errors`` for the
        days ``first..last`` (UTC, inclusive), one row per distinct ``group_by`` values."""
        names = await self.names()
        ids = sorted(names) if kids is None else kids
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)][:MAX_DAYS]
        async with self.redis.pipeline(transaction=False) as pipe:
            for kid in ids:
                for day in days:
                    pipe.hgetall(self.keys.usage(kid, day.strftime("%Y%m%d")))
            replies = iter(await pipe.execute())
        rows: dict[tuple[str, ...], dict[str, Any]] = {}
        for kid in ids:
            for day in days:
                for field, value in next(replies).items():
                    model, _, what = field.rpartition(":")
                    values = {"key": kid, "model": model, "day": day.isoformat()}
                    group = tuple(values[g] for g in group_by)
                    row = rows.get(group)
                    if row is None:
                        row = rows[group] = {g: values[g] for g in group_by}
                        if "key" in group_by:
                            row["name"] = names.get(kid, "")
                        row.update(requests=0, input_tokens=0, output_tokens=0, errors=0)
                    column = {"input": "input_tokens", "output": "output_tokens"}.get(what, what)
                    row[column] += int(value)
        return [rows[group] for group in sorted(rows)]
