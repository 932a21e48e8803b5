"""Prometheus metrics of this worker process, and the ``/metrics`` route.

Owns the metric objects and ``Metrics`` (the route). Counters and histograms are updated on
the request path (the access line in ``server.web.handler``, the attempts in
``server.core.completion``);
gauges that describe shared state (pool tokens by state, live instances, Redis reachable)
are read from Redis when scraped. Each worker process has its own registry: run one worker
per pod (as ``k8s/`` does) or scrape each process.
"""

from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from tornado.web import RequestHandler

from server.transport import open_exchanges
from state.facts import SELF_CHECK, Facts

if TYPE_CHECKING:  # the services import this module (through the egress): no cycle at run time
    from server.services import Services

__all__ = [
    "ACCEPT_PAUSES",
    "ATTEMPT_ERRORS",
    "CAPTCHA_SIDECAR",
    "EDGE_REFUSED",
    "GUESTS",
    "PACING_WAIT",
    "REQUESTS",
    "RETRIES",
    "Metrics",
    "observe_key",
    "observe_request",
]

REGISTRY = CollectorRegistry()
_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)

GUESTS = Counter(
    "zai_gateway_guests",
    "Guest credentials given to upstream attempts, by source: the shared reserve, or a "
    "sign-in on the request's path (inline: an extra upstream round trip before the answer).",
    ["source"],
    registry=REGISTRY,
)
REQUESTS = Counter(
    "zai_gateway_requests",
    "Requests answered, by route, model and status.",
    ["route", "model", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "zai_gateway_request_duration_seconds",
    "Whole request time, by route.",
    ["route"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
TTFB = Histogram(
    "zai_gateway_time_to_first_byte_seconds",
    "Time until the first byte of the answer was sent, by route.",
    ["route"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
ATTEMPT_ERRORS = Counter(
    "zai_gateway_upstream_errors", "Failed upstream attempts, by kind.", ["kind"], registry=REGISTRY
)
RETRIES = Counter("zai_gateway_upstream_retries", "Upstream attempts retried.", registry=REGISTRY)
EDGE_REFUSED = Counter(
    "zai_gateway_connections_refused",
    "Connections answered and closed before any request was read, by reason "
    "(max_connections, uri_too_long, headers_too_large).",
    ["reason"],
    registry=REGISTRY,
)
ACCEPT_PAUSES = Counter(
    "zai_gateway_accept_pauses",
    "Episodes out of file descriptors (new clients answered 503, or accepting paused).",
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "zai_gateway_inflight_requests", "Completions in flight in this process.", registry=REGISTRY
)
POOL = Gauge(
    "zai_gateway_pool_tokens",
    "Pooled upstream tokens, by state (shared).",
    ["state"],
    registry=REGISTRY,
)
COOLDOWN = Gauge(
    "zai_gateway_pool_cooldown_seconds_max",
    "Longest cooldown left among pooled tokens (shared).",
    registry=REGISTRY,
)
LEASES = Gauge(
    "zai_gateway_pool_leases",
    "Leases on pooled tokens (shared); owner=orphan: held by no live gateway process, they "
    "lapse at their deadline (LEASE_TTL).",
    ["owner"],
    registry=REGISTRY,
)
UNSETTLED = Gauge(
    "zai_gateway_pool_unsettled_leases",
    "Leases this process could not confirm or release (Redis did not answer); revoked as soon "
    "as Redis answers again.",
    registry=REGISTRY,
)
CAPTCHA_DEPTH = Gauge(
    "zai_gateway_captcha_pool_depth",
    "Live single-use captcha params in the shared pool (shared).",
    registry=REGISTRY,
)
CAPTCHA_SIDECAR = Counter(
    "zai_gateway_captcha_sidecar_fetches_total",
    "Params asked of the solver sidecar (CAPTCHA_URL), by why (ahead: to keep the pool at "
    "CAPTCHA_LOW_WATER; demand: a completion found the pool empty) and outcome (ok, timeout, "
    "unreachable, refused, bad_answer).",
    ["why", "outcome"],
    registry=REGISTRY,
)
PACING_WAIT = Histogram(
    "zai_gateway_pacing_wait_seconds",
    "Time upstream calls waited for their slot on an egress route, by route.",
    ["route"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
ROUTE_BLOCKED = Gauge(
    "zai_gateway_route_blocked_seconds",
    "Seconds left on each egress route's WAF breaker, 0 = open to traffic (shared).",
    ["route"],
    registry=REGISTRY,
)
CHATS_PENDING = Gauge(
    "zai_gateway_chats_pending_deletion",
    "Throwaway upstream chats not yet deleted: answering, due, or retried later (shared).",
    registry=REGISTRY,
)
INSTANCES = Gauge("zai_gateway_instances", "Gateway processes alive (shared).", registry=REGISTRY)
UPSTREAM_OPEN = Gauge(
    "zai_gateway_upstream_connections",
    "Upstream connections open in this process.",
    registry=REGISTRY,
)
KEY_REQUESTS = Counter(
    "zai_gateway_key_requests",
    "Requests answered per client key (id and name, never the secret), model and status.",
    ["key", "name", "model", "status"],
    registry=REGISTRY,
)
KEY_TOKENS = Counter(
    "zai_gateway_key_tokens",
    "Tokens used per client key and model, by direction (input, output).",
    ["key", "name", "model", "direction"],
    registry=REGISTRY,
)
STEP_OK = Gauge(
    "zai_gateway_upstream_step_ok",
    "1 when the last background self-check's step passed on that route, 0 when it failed"
    " (shared; SELF_CHECK_INTERVAL).",
    ["route", "step"],
    registry=REGISTRY,
)
CHECKED_AT = Gauge(
    "zai_gateway_upstream_check_timestamp_seconds",
    "Unix time of the last background self-check (shared; 0 = none recent).",
    registry=REGISTRY,
)
REDIS_UP = Gauge(
    "zai_gateway_redis_up", "1 when the shared state store answers.", registry=REGISTRY
)


def observe_request(route: str, model: str, status: int, seconds: float, ttfb: float) -> None:
    REQUESTS.labels(route, model, str(status)).inc()
    LATENCY.labels(route).observe(seconds)
    TTFB.labels(route).observe(ttfb)


def observe_key(
    key: str, name: str, model: str, status: int, tokens_in: int, tokens_out: int
) -> None:
    KEY_REQUESTS.labels(key, name, model, str(status)).inc()
    if tokens_in:
        KEY_TOKENS.labels(key, name, model, "input").inc(tokens_in)
    if tokens_out:
        KEY_TOKENS.labels(key, name, model, "output").inc(tokens_out)


async def _self_check(services: "Services") -> dict[str, Any]:
    """The last background self-check's report, while it is recent (three intervals)."""
    interval = services.settings.self_check_interval
    if not interval:
        return {}
    facts = Facts(services.redis, services.keys)
    found = await facts.get(SELF_CHECK, 3 * interval)
    return msgspec.json.decode(found) if found else {}


class Metrics(RequestHandler):
    def initialize(self, services: "Services") -> None:
        self.services = services

    async def get(self) -> None:
        services = self.services
        INFLIGHT.set(len(services.active))
        UPSTREAM_OPEN.set(open_exchanges())
        UNSETTLED.set(len(services.pool.unsettled))
        try:
            rows = await services.pool.status()
            live = await services.instances.live()
            captcha = services.captchas.pool
            depth = await captcha.depth() if captcha is not None else 0
            routes = await services.egress.status()
            chats = services.chats
            pending = await chats.ledger.pending() if chats is not None else 0
            report = await _self_check(services)
        except (RedisError, OSError) as exc:
            logger.debug("metrics: shared state unreachable: {}", exc)
            REDIS_UP.set(0)
        else:
            REDIS_UP.set(1)
            for state in ("active", "cooling", "dead", "pending"):
                POOL.labels(state).set(sum(1 for row in rows if row.state == state))
            COOLDOWN.set(max((row.cooldown_left for row in rows), default=0))
            orphans = sum(row.orphans for row in rows)
            LEASES.labels("live").set(sum(row.leases for row in rows) - orphans)
            LEASES.labels("orphan").set(orphans)
            INSTANCES.set(len(live))
            CAPTCHA_DEPTH.set(depth)
            for route in routes:
                ROUTE_BLOCKED.labels(route["id"]).set(route["blocked_for"])
            CHATS_PENDING.set(pending)
            STEP_OK.clear()  # a step or route gone from the report is gone from here too
            for route in report.get("routes", []):
                for step in route["steps"]:
                    STEP_OK.labels(route["label"], step["name"]).set(1 if step["ok"] else 0)
            CHECKED_AT.set(report.get("at", 0))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(REGISTRY))
