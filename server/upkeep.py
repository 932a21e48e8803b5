"""What a gateway process does between requests: its life in the cluster, in the background.

Owns ``Upkeep`` (the loops of one process, started and stopped with its ``Services``) and
``safely`` (a step that may fail on Redis or the network is logged and skipped: the next turn
tries again). The beat, every third of ``INSTANCE_TTL``, sends the heartbeat, renews held
leases and throwaway chats, sweeps chats other replicas left, reloads the configured tokens
into a Redis that restarted empty, re-checks tokens still pending (their first check could
not reach the upstream) with back-off, and re-checks dead tokens every
``POOL_HEALTH_INTERVAL`` (one replica at a time, by a lock). Other loops write the per-key
usage counts every ``USAGE_FLUSH_INTERVAL``, follow the live upstream config every
``UPSTREAM_CONFIG_POLL``, keep the shared captcha pool at ``CAPTCHA_LOW_WATER`` with a solver
sidecar, and run the background self-check every ``SELF_CHECK_INTERVAL`` (one replica per
interval, its report shared in Redis for every replica's ``/metrics``).
"""

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import msgspec
from loguru import logger
from redis.exceptions import RedisError

from server.ops.upstream_check import check_upstream
from state.facts import SELF_CHECK, Facts
from state.tasks import stop_tasks

if TYPE_CHECKING:
    from server.services import Services

__all__ = ["Upkeep", "safely"]

_PENDING_CAP = 600.0  # seconds between re-checks of pending tokens at most, when
# POOL_HEALTH_INTERVAL is 0 (checks on demand only): a pending token is never used, so it
# cannot wait for a demand that will not come.


async def safely(what: str, work: Awaitable[object]) -> None:
    try:
        await work
    except (RedisError, OSError) as exc:
        logger.warning("{} failed (shared state unreachable?): {}", what, exc)


class Upkeep:
    def __init__(self, services: "Services") -> None:
        self.services = services
        self.tasks: list[asyncio.Task[None]] = []
        # monotonic time of the next re-check of pending tokens: set when a check could not
        # reach the upstream, so an idle pool costs nothing
        self._pending_due = float("inf")
        self._pending_wait = 0.0  # its back-off: one beat, doubling while the upstream is away

    def __repr__(self) -> str:
        return f"<Upkeep {len(self.tasks)} loops>"

    def start(self) -> None:
        services, settings = self.services, self.services.settings
        loops = [self._beat(), self._flush_usage()]
        if services.live is not None:
            loops.append(self._follow_config())
        if services.captchas.sidecar is not None and services.captchas.low_water:
            loops.append(self._keep_captchas())
        if settings.self_check_interval:
            loops.append(self._self_check())
        self.tasks += [asyncio.ensure_future(loop) for loop in loops]

    async def stop(self) -> None:
        await stop_tasks(self.tasks)

    def pending_unreached(self) -> None:
        """A check could not reach the upstream: look at pending tokens again in a beat."""
        if self._pending_wait == 0:
            self._pending_due = time.monotonic() + self.services.settings.instance_ttl / 3

    async def _beat(self) -> None:
        services, settings = self.services, self.services.settings
        beat = settings.instance_ttl / 3
        next_check = time.monotonic() + settings.pool_health_interval
        while True:
            await asyncio.sleep(beat)
            if not services.draining:
                await safely("heartbeat", services.instances.heartbeat(len(services.active)))
            await safely("lease renewal", services.pool.renew())
            if services.chats is not None:
                await safely("chat renewal", services.chats.renew())
                await safely("chat sweep", services.chats.sweep())
            await safely("pool check", self._reload_if_lost())
            await safely("pending check", self._recheck_pending())
            if settings.pool_health_interval and time.monotonic() >= next_check:
                next_check = time.monotonic() + settings.pool_health_interval
                await safely("health check", self._recheck_dead())

    async def _flush_usage(self) -> None:
        services = self.services
        while services.usage is not None:
            await asyncio.sleep(services.settings.usage_flush_interval)
            await safely("writing usage", services.usage.flush())

    async def _follow_config(self) -> None:
        live = self.services.live
        while live is not None:
            await asyncio.sleep(self.services.settings.upstream_config_poll)
            await safely("live config", live.follow())

    async def _keep_captchas(self) -> None:
        services = self.services
        while True:
            await asyncio.sleep(services.settings.captcha_refill_interval)
            if not services.draining:
                await safely("captcha refill", services.captchas.keep_up(services.client))

    async def _self_check(self) -> None:
        interval = self.services.settings.self_check_interval
        while True:
            await asyncio.sleep(interval)
            if not self.services.draining:
                await safely("self-check", self._check_upstream(interval))

    async def _check_upstream(self, interval: float) -> None:
        """One replica per interval (the one that takes the lock) runs the self-check and
        shares its report (``SELF_CHECK``), which every replica's ``/metrics`` exports."""
        services = self.services
        if not await services.lock("self-check", interval * 0.9):
            return
        report = {**await check_upstream(services, complete=True), "at": time.time()}
        if not report["ok"]:
            broken = [
                f"{route['label']}: {step['name']}"
                for route in report["routes"]
                for step in route["steps"]
                if not step["ok"]
            ]
            logger.warning("self-check: upstream steps failing: {}", "; ".join(broken))
        encoded = msgspec.json.encode(report).decode()
        await Facts(services.redis, services.keys).put(SELF_CHECK, encoded)

    async def _reload_if_lost(self) -> None:
        """A Redis that restarted empty lost the pool: put the configured tokens back."""
        services = self.services
        if services.configured and not await services.redis.exists(services.keys.tokens):
            logger.warning("the token pool is gone from Redis (restarted?): reloading it")
            await services.load(services.configured)

    async def _recheck_pending(self) -> None:
        """Tokens whose check could not reach the upstream (start-up, or a Redis restarted
        empty, while the upstream was down) are checked again, backing off from one beat
        doubling up to POOL_HEALTH_INTERVAL, instead of staying pending until a manual check."""
        services, settings = self.services, self.services.settings
        now = time.monotonic()
        if now < self._pending_due:
            return
        pending = [row.id for row in await services.pool.status() if row.state == "pending"]
        if not pending:
            self._pending_wait, self._pending_due = 0.0, float("inf")
            return
        beat = settings.instance_ttl / 3
        cap = max(beat, settings.pool_health_interval or _PENDING_CAP)
        self._pending_wait = min(cap, self._pending_wait * 2 or beat)
        self._pending_due = now + self._pending_wait
        if not await services.lock("pending-check", self._pending_wait):
            return  # another replica checks them this time
        for row in await services.health_check(pending):
            logger.info("re-check pending token {}: {} {}", row.masked, row.verdict, row.reason)

    async def _recheck_dead(self) -> None:
        services = self.services
        if not await services.lock(
            "health-check", max(1.0, services.settings.pool_health_interval)
        ):
            return
        # Pending ones too: the replica whose check could not reach the upstream re-checks
        # them sooner, but it may have stopped since; this is every replica's safety net.
        rows = await services.pool.status()
        stale = [row.id for row in rows if row.state in ("dead", "pending")]
        if stale:
            for row in await services.health_check(stale):
                logger.info("re-check token {}: {} {}", row.masked, row.verdict, row.reason)
