"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (it can take traffic).

Owns the two probe routes; no key needed, nothing secret in them. ``/readyz`` is 503 only for
what is this replica's own: it is draining, or it cannot reach Redis. It stays 200 when no
upstream token is usable (all pending, cooling or dead) or the upstream is down: the pool is
shared by every replica, so each one is in the same state and taking them out of the load
balancer would not help; it would only turn the gateway's 503/429 that names the cause and
says when to retry into a load balancer's bare error, and stall a rolling update. What the
replica can serve is in the body instead (``serves`` and the tokens by state), read with
the same one round trip the probe always cost.
"""

from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from tornado.web import RequestHandler

from server.credentials.sources import PooledTokens

if TYPE_CHECKING:
    from server.services import Services

__all__ = ["Alive", "Ready", "serves"]


class Alive(RequestHandler):
    def initialize(self, services: "Services") -> None:
        self.services = services

    async def get(self) -> None:
        self.write({"status": "ok"})


class Ready(Alive):
    async def get(self) -> None:
        services = self.services
        if services.draining:
            self.set_status(503)
            self.write({"status": "draining"})
            return
        try:
            counts = await services.pool.counts()
        except (RedisError, OSError) as exc:
            self.set_status(503)
            self.write({"status": "not ready", "redis": f"unreachable: {exc}"})
            return
        pooled = isinstance(services.tokens, PooledTokens)
        what, detail = serves(counts if pooled else None, services.guests is not None)
        body: dict[str, object] = {"status": "ready", "redis": "ok", "serves": what}
        body["detail"] = detail
        if pooled:
            body["tokens"] = counts
        self.write(body)


def serves(counts: dict[str, int] | None, guests: bool) -> tuple[str, str]:
    """What requests can be served with (``pooled``, ``guests`` or ``nothing``), and why, given
    the pooled tokens by state (None: no pool) and whether guests stand in.

    >>> serves({"active": 0, "cooling": 0, "pending": 2, "dead": 0}, False)[0]
    'nothing'
    """
    if counts and counts["active"]:
        return "pooled", f"{counts['active']} pooled upstream token(s) usable"
    unusable = ", ".join(f"{n} {state}" for state, n in (counts or {}).items() if n)
    why = f"no pooled upstream token is usable ({unusable or 'none in the pool'})"
    if counts is None:
        why = "no upstream token pool"
    if guests:
        return "guests", f"{why}: guests stand in for the models open to them"
    later = ""
    if counts and counts["pending"]:
        later = "; pending tokens are checked again by themselves"
    return "nothing", (
        f"{why} and ANONYMOUS_MODE is off: requests get a 503 or 429 saying so{later}; still "
        "ready, as every replica shares this state"
    )
