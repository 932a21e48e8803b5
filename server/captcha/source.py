"""Where a completion's single-use captcha param comes from, after the caller's own.

Owns ``CaptchaSource``: ``mode`` is ``ZAI_CAPTCHA`` (auto|on|off, ``needed`` reads the
upstream's cached ``/api/config`` flag in auto); ``take`` pops one from the shared pool in Redis,
else asks the solver sidecar on demand (``CAPTCHA_URL``), and says in plain words why none came;
``keep_up`` is the replicas' background upkeep: while the pool holds fewer than
``CAPTCHA_LOW_WATER`` live params, the one replica holding the Redis lock ``<p>lock:captcha-refill``
asks the sidecar for the difference ahead of need and pushes each answer into the pool. No
param is ever logged.
"""

import asyncio
from dataclasses import dataclass

from loguru import logger
from redis.exceptions import RedisError

from server.captcha.sidecar import Sidecar, SidecarError
from server.zai.client import ZaiClient
from state.captcha import CaptchaPool
from state.locks import Lock

__all__ = ["CaptchaSource"]

_LOCK = "captcha-refill"
# A sidecar's param is pushed with a little less than the life it announced: the pool must
# never hand out one that dies between the pop and the upstream's check.
_MARGIN = 2.0


@dataclass(slots=True)
class CaptchaSource:
    """The pool and the sidecar behind ``ZAI_CAPTCHA``; ``await source.take()`` is
    ``(param, "")`` or ``("", why none)``."""

    mode: str = "auto"
    pool: CaptchaPool | None = None
    retry_after: float = 10.0
    sidecar: Sidecar | None = None
    low_water: int = 0

    def __repr__(self) -> str:
        return f"<CaptchaSource {self.mode} {self.pool!r} {self.sidecar!r} low={self.low_water}>"

    async def needed(self, client: ZaiClient) -> bool:
        if self.mode == "off":
            return False
        return self.mode == "on" or await client.captcha_enabled()

    async def take(self, ask_sidecar: bool = True) -> tuple[str, str]:
        """A live param from the pool, else a fresh one from the sidecar; with an empty
        param, the second value says what the sidecar did (empty when it was not asked)."""
        if self.pool is not None:
            try:
                param = await self.pool.take()
                if param:
                    return param, ""
            except RedisError as exc:
                logger.warning("captcha pool unreachable: {}", exc)
        if self.sidecar is None or not ask_sidecar:
            return "", ""
        try:
            return (await self.sidecar.solve("demand")).param, ""
        except SidecarError as exc:
            logger.warning("no captcha param on demand: {}", exc)
            return "", str(exc)

    async def keep_up(self, client: ZaiClient) -> int:
        """Ask the sidecar ahead of need until the pool holds ``low_water`` live params (one
        replica at a time); returns how many were added."""
        pool, sidecar = self.pool, self.sidecar
        if pool is None or sidecar is None or self.low_water <= 0:
            return 0
        if not await self.needed(client) or await pool.depth() >= self.low_water:
            return 0
        lock = Lock(pool.redis, pool.keys.lock(_LOCK), sidecar.timeout + 5)
        if not await lock.acquire():
            return 0  # another replica is filling it
        # Looked again under the lock: the replica that held it before may just have filled it.
        wanted = self.low_water - await pool.depth()
        failed = await asyncio.gather(*(self.ask_ahead() for _ in range(wanted)))
        if not any(failed):
            await lock.release()
        # else the lock is left to expire: it spaces every replica's retries of a failing
        # sidecar by CAPTCHA_TIMEOUT + 5 s (requests still ask it on demand meanwhile)
        return failed.count("")

    async def ask_ahead(self) -> str:
        """One param from the sidecar into the pool; the plain reason when none came."""
        if self.sidecar is None or self.pool is None:
            return "no solver sidecar (CAPTCHA_URL) is set"
        try:
            answer = await self.sidecar.solve("ahead")
        except SidecarError as exc:
            logger.warning("captcha refill: {}", exc)
            return str(exc)
        await self.pool.push([answer.param], max(0.5, answer.expires_in - _MARGIN))
        return ""
