"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (it can serve: Redis answers).

Owns the two probe routes; no key needed, nothing secret in them.
"""

from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from tornado.web import RequestHandler

if TYPE_CHECKING:
    from server.services import Services

__all__ = ["Alive", "Ready"]


class Alive(RequestHandler):
    def initialize(self, services: "Services") -> None:
        self.services = services

    async def get(self) -> None:
        self.write({"status": "ok"})


class Ready(Alive):
    async def get(self) -> None:
        if self.services.draining:
            self.set_status(503)
            self.write({"status": "draining"})
            return
        try:
            await self.services.redis.ping()
        except (RedisError, OSError) as exc:
            self.set_status(503)
            self.write({"status": "not ready", "redis": f"unreachable: {exc}"})
            return
        self.write({"status": "ready", "redis": "ok"})
