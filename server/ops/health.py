"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (it can serve: Redis answers).

Owns the two probe routes; no key needed, nothing secret in them.
"""

from redis.exceptions import RedisError
from tornado.web import RequestHandler

__all__ = ["Alive", "Ready"]


class Alive(RequestHandler):
    def initialize(self, services: object) -> None:
        self.services = services

    def get(self) -> None:
        self.write({"status": "ok"})


class Ready(Alive):
    async def get(self) -> None:
        if self.services.draining:  # type: ignore[attr-defined]
            self.set_status(503)
            self.write({"status": "draining"})
            return
        try:
            await self.services.redis.ping()  # type: ignore[attr-defined]
        except (RedisError, OSError) as exc:
            self.set_status(503)
            self.write({"status": "not ready", "redis": f"unreachable: {exc}"})
            return
        self.write({"status": "ready", "redis": "ok"})
