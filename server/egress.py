"""Egress routes: which way each upstream call leaves (direct, or through a proxy), and each
route's WAF breaker shared by every replica.

Owns ``Route``, ``parse_routes`` and ``Egress``. ``UPSTREAM_PROXIES`` lists the routes
(``http://`` and ``socks5://`` proxy URLs, and ``direct``; empty = direct only). The Aliyun
WAF blocks per IP address, so a block seen on one route opens that route's breaker only
(``state/waf.py``, one hash per route id) and the request moves to the next route. ``pick``
hands out the routes whose breakers are closed in turn (per process: the breakers are what
replicas must agree on, not the turn); with none left it raises ``waf_blocked`` with the
soonest return as Retry-After. ``pace`` holds every upstream call to its route's slot
(``state/pacing.py``: a floor on the gap between calls, the same for all replicas, and one
per pooled token when ``PACING_TOKEN_MIN_GAP_MS`` is set), waiting
rather than failing up to ``PACING_MAX_WAIT``. A process reads every breaker in one Lua call
at most once a second, and not at all while it knows every route is open. A proxy that
cannot be reached (refused, silent, or refusing our credentials) shuts its route the same way,
with its own shorter backoff (``ROUTE_DOWN_BACKOFF_*``): the route is at fault, never a token
or the upstream, and the same probe reopens it. Route ids (``direct``, ``proxy-<hash>``) and
labels never carry a proxy's credentials: they are what logs, the status API and metrics show.
"""

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypedDict

from loguru import logger
from redis.exceptions import RedisError

from server.core.errors import GatewayError
from server.ops.metrics import PACING_WAIT
from server.ops.tracing import traced
from server.transport import Proxy
from state.keys import token_id
from state.pacing import Pacer
from state.waf import HALF_OPEN, WafBreaker

__all__ = ["DIRECT", "ROUTE_FAULTS", "Egress", "Route", "RouteStatus", "parse_routes"]

_RECHECK = 1.0  # seconds a process trusts its view of the shared breakers
_PROBE_LOCK = 20.0  # seconds one replica holds a route's probe (longer than a probe takes)
_PROBE_WAIT = 5.0  # seconds a request waits for another replica's probe before a 503
_PROBE_POLL = 0.25  # seconds between looks at the shared breaker while waiting for it

# The failures that shut a route rather than blame a token: kind -> why the breaker says.
_WHY = {"waf_blocked": "waf", "route_unreachable": "down"}
ROUTE_FAULTS = frozenset(_WHY)
# Per why: the kind a request hears when every route is shut so, the log line of a trip.
_SHUT_KIND = {"waf": "waf_blocked", "down": "route_unreachable"}
_SHUT_WORD = {"waf_blocked": "blocked", "route_unreachable": "unreachable"}
_ALONE = {
    "waf_blocked": "the shared breaker is open",
    "route_unreachable": "the only route, {}, failed: held back",
}
_TRIPPED = {
    "waf": "upstream WAF block on route {} ({}): completions held back on it for {:.1f} s",
    "down": "egress proxy of route {} ({}) unreachable: route held back for {:.1f} s",
}

Prober = Callable[["Route"], Awaitable[bool | None]]  # True blocked, False clear, None unknown


@dataclass(frozen=True, slots=True)
class Route:
    id: str  # the key of its breaker: stable across replicas, safe to show
    proxy: Proxy | None = None

    @property
    def label(self) -> str:
        return "direct" if self.proxy is None else self.proxy.label

    def __repr__(self) -> str:
        return f"<Route {self.id} {self.label}>"


DIRECT = Route("direct")


def parse_routes(entries: list[str]) -> tuple[Route, ...]:
    """The routes of ``UPSTREAM_PROXIES`` in order, de-duplicated; ``ValueError`` on a bad
    entry (its message never holds credentials)."""
    routes: dict[str, Route] = {}
    for entry in entries:
        if entry.strip().lower() == "direct":
            routes.setdefault("direct", DIRECT)
            continue
        proxy = Proxy.parse(entry)
        # The password is left out of the id: a hash of it would be a guessing oracle.
        who = f"{proxy.scheme}://{proxy.username}@{proxy.host}:{proxy.port}"
        rid = "proxy-" + hashlib.sha256(who.encode()).hexdigest()[:10]
        routes.setdefault(rid, Route(rid, proxy))
    return tuple(routes.values()) or (DIRECT,)


class RouteStatus(TypedDict):
    """A route as the status API shows it (``Egress.status``)."""

    id: str
    label: str
    state: str  # ok, blocked, half-open
    blocked_for: float  # seconds its breaker has left
    reason: str  # the failure kind that shut it; "" when ok


@dataclass(slots=True)
class Egress:
    routes: tuple[Route, ...] = (DIRECT,)
    breaker: WafBreaker | None = None
    pacer: Pacer | None = None
    prober: Prober | None = None  # the dialect's bare probe of a route (ZaiClient.probe_waf)
    down_backoff: tuple[float, float] = (10.0, 300.0)  # base, cap (s) for an unreachable proxy
    _turn: int = 0
    _shut: set[str] = field(default_factory=set)  # routes whose breaker is set (or half-open)
    _until: dict[str, float] = field(default_factory=dict)  # route id -> monotonic time
    _why: dict[str, str] = field(default_factory=dict)  # route id -> why it is shut (_WHY)
    _checked: float = float("-inf")
    _probed: dict[str, float] = field(default_factory=dict)  # route id -> last probe try

    def __repr__(self) -> str:
        return f"<Egress {', '.join(route.label for route in self.routes)}>"

    async def pick(self, model: str = "") -> Route:
        """The next route whose breaker is closed; ``waf_blocked`` when every one is open.
        A route whose window is over is probed first by whichever replica takes its probe
        lock; with no other route open, the rest wait (a few seconds) for that verdict."""
        await self._refresh()
        await self._probe_due()
        open_routes = self._in_turn(open_only=True)
        deadline = time.monotonic() + _PROBE_WAIT
        while not open_routes and self._half_open() and time.monotonic() < deadline:
            await asyncio.sleep(_PROBE_POLL)
            await self._refresh(force=True)
            await self._probe_due()
            open_routes = self._in_turn(open_only=True)
        if open_routes:
            self._advance(open_routes[0])
            return open_routes[0]
        kind, detail = self._all_shut()
        if len(self.routes) == 1:
            detail = _ALONE[kind].format(self.routes[0].label)
        raise GatewayError(kind, detail, model=model, retry_after=self.blocked_for())

    def _all_shut(self) -> tuple[str, str]:
        """The kind a request hears when no route is open (an unreachable proxy only when
        every route is down so: one WAF block is what the operator must hear of) and why."""
        whys = {self._why.get(route.id, "waf") for route in self.routes}
        kind = _SHUT_KIND["down" if whys == {"down"} else "waf"]
        return kind, f"every egress route ({len(self.routes)}) is {_SHUT_WORD[kind]}"

    @traced("pacing wait")
    async def pace(self, route: Route | None, model: str = "", token: str = "") -> Route:
        """Wait for this call's slot on ``route`` (shared by every replica), or, with none
        given (a call the WAF does not gate: home page, sign-in, config), on whichever route
        can send soonest, open ones first; with a pooled ``token``, no sooner than that
        token's own floor (``PACING_TOKEN_MIN_GAP_MS``). ``pacing_backlog`` when the wait
        would be longer than ``PACING_MAX_WAIT``."""
        if route is not None:
            candidates = [route]
        else:
            candidates = self._in_turn(open_only=True) or self._in_turn(open_only=False)
        chosen, wait = candidates[0], 0.0
        if self.pacer is not None and not self.pacer.off:
            try:
                tid = token_id(token) if token else ""  # the key holds no token
                index, wait = await self.pacer.reserve([r.id for r in candidates], tid)
            except RedisError as exc:
                logger.debug("pacing state unreachable, sending unpaced: {}", exc)
                index, wait = 0, 0.0
            if index < 0:
                raise GatewayError(
                    "pacing_backlog",
                    f"the next free slot is {wait:.1f} s away",
                    model=model,
                    retry_after=wait,
                )
            chosen = candidates[index]
            PACING_WAIT.labels(chosen.id).observe(wait)
        if route is None:
            self._advance(chosen)
        if wait > 0:
            await asyncio.sleep(wait)
        return chosen

    async def all_blocked(self) -> bool:
        """Whether every route is blocked or waiting for its probe, in this process's view
        (read from Redis at most once a second, as ``pick`` reads it)."""
        await self._refresh()
        if self._in_turn(open_only=True) or self.breaker is None:
            return False
        now = time.monotonic()
        if now - self._checked >= _RECHECK:  # an operator may have lifted the block meanwhile
            await self._read(now)
        return not self._in_turn(open_only=True)

    def blocked_for(self) -> float:
        """Seconds until the first blocked route may return (0 when one is open); a route
        waiting for its probe counts as a few seconds away."""
        now = time.monotonic()
        return min(self._left(route, now) for route in self.routes)

    def _left(self, route: Route, now: float) -> float:
        if route.id not in self._shut:
            return 0.0
        left = self._until.get(route.id, 0.0) - now
        return left if left > 0 else _PROBE_WAIT

    async def trip(self, route: Route, err: GatewayError) -> bool:
        """Open ``route``'s breaker for every replica, for a failure of ``ROUTE_FAULTS``
        (a WAF page, an unreachable proxy); returns whether another route is open (the
        request may move there)."""
        why = _WHY[err.kind]
        base, cap = self.down_backoff if why == "down" else (None, None)
        left = base or (self.breaker.base if self.breaker is not None else 0.0)
        if self.breaker is not None:
            try:
                left = await self.breaker.trip(route.id, why, base, cap)
            except RedisError as exc:
                logger.warning("WAF breaker unreachable: {}", exc)
        self._until[route.id] = time.monotonic() + left
        self._shut.add(route.id)
        self._why[route.id] = why
        logger.warning(_TRIPPED[why], route.id, route.label, left)
        if self._in_turn(open_only=True):
            return True
        err.retry_after = self.blocked_for()  # the first route to come back, maybe another
        if len(self.routes) > 1:
            err.detail = f"{err.detail}; {self._all_shut()[1]}"
        return False

    async def status(self) -> list[RouteStatus]:
        """Each route as the status API shows it: id, label, ``state`` (ok, blocked,
        half-open: waiting for a probe), the seconds its breaker has left and ``reason``, the
        failure that shut it (``waf_blocked``, ``route_unreachable``; "" when ok)."""
        states = [(0.0, "waf")] * len(self.routes)
        if self.breaker is not None:
            states = await self.breaker.states(*(route.id for route in self.routes))
        return [
            {
                "id": route.id,
                "label": route.label,
                "state": "half-open" if left == HALF_OPEN else "blocked" if left else "ok",
                "blocked_for": max(0.0, round(left, 3)),
                "reason": _SHUT_KIND[why] if left else "",
            }
            for route, (left, why) in zip(self.routes, states, strict=True)
        ]

    def _in_turn(self, open_only: bool) -> list[Route]:
        """The routes from this process's turn on, without the known-blocked if asked."""
        count = len(self.routes)
        ordered = [self.routes[(self._turn + step) % count] for step in range(count)]
        return [r for r in ordered if not open_only or r.id not in self._shut]

    def _half_open(self) -> list[Route]:
        now = time.monotonic()
        return [r for r in self.routes if r.id in self._shut and self._until.get(r.id, 0) <= now]

    def _advance(self, route: Route) -> None:
        self._turn = (self.routes.index(route) + 1) % len(self.routes)

    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.breaker is None or (now - self._checked < _RECHECK and not force):
            return
        if not self._in_turn(open_only=True) and not self._half_open():
            return  # every route known blocked: nothing to ask until the first window ends
        await self._read(now)

    async def _read(self, now: float) -> None:
        if self.breaker is None:
            return
        self._checked = now
        try:
            states = await self.breaker.states(*(route.id for route in self.routes))
        except RedisError as exc:
            logger.debug("WAF breakers unreachable: {}", exc)
            for route in self._half_open():  # no probe can be agreed on: its window is over
                self._shut.discard(route.id)
            return
        for route, (left, why) in zip(self.routes, states, strict=True):
            self._until[route.id] = now + max(0.0, left)
            self._why[route.id] = why
            if left:
                self._shut.add(route.id)
            else:
                self._shut.discard(route.id)

    async def _probe_due(self) -> None:
        """Probe each half-open route whose probe lock this replica takes (at most one try
        per route a second): clear for all, or blocked again with the backoff doubled."""
        if self.breaker is None or self.prober is None:
            return
        for route in self._half_open():
            now = time.monotonic()
            if now - self._probed.get(route.id, float("-inf")) < _RECHECK:
                continue
            self._probed[route.id] = now
            try:
                await self._probe(route)
            except RedisError as exc:
                logger.debug("WAF probe of {} skipped: {}", route.id, exc)

    async def _probe(self, route: Route) -> None:
        lock = self.breaker.probe_lock(route.id, _PROBE_LOCK)  # type: ignore[union-attr]
        if not await lock.acquire():
            return  # another replica probes it
        # This view may be older than another replica's probe that just ended (its lock is
        # free again): a breaker that is not half-open any more has its verdict already.
        ((left, _),) = await self.breaker.states(route.id)  # type: ignore[union-attr]
        if left != HALF_OPEN:
            self._until[route.id] = time.monotonic() + max(0.0, left)
            if not left:
                self._shut.discard(route.id)
            await lock.release()
            return
        blocked = await self.prober(route)  # type: ignore[misc]
        if blocked is None:
            logger.info("WAF probe of route {} got no answer; trying later", route.id)
            return  # the lock lapses by itself: no replica re-probes before it does
        if blocked:
            left = await self.breaker.trip(route.id)  # type: ignore[union-attr]
            self._until[route.id] = time.monotonic() + left
            logger.warning("route {} is still blocked: held back {:.1f} s more", route.id, left)
        elif await self.breaker.clear(route.id):  # type: ignore[union-attr]
            self._shut.discard(route.id)
            logger.info("route {} is clear of the WAF again (probed): open to all", route.id)
        await lock.release()
