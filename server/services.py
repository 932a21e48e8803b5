"""What one worker process shares between its requests: the wiring, built once per worker.

Owns ``Services`` and ``make_services``: settings, the Redis client (real or embedded), the
upstream client, the token source, the pool, the guest reserve, client keys, the captcha
source, egress, the live config and this process's registration; ``start()`` (move an older
release's key names, ``state.layout``; apply the live upstream config; register, load the
configured tokens into the shared pool and check the new ones, fill the guest reserve, begin
the background loops of ``server.upkeep``) and ``stop()`` (end the loops, deregister, send
the last releases and usage, close). Build it inside each worker, after any fork.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from loguru import logger
from redis.asyncio import Redis

from server.captcha.sidecar import Sidecar
from server.captcha.source import CaptchaSource
from server.core.catalogue import Catalogue
from server.core.chats import ThrowawayChats
from server.core.continuation import Continuations
from server.core.errors import GatewayError
from server.credentials.checks import CheckResult, check_tokens, configured_tokens
from server.credentials.sources import GuestTokens, NoTokens, PooledTokens, TokenSource
from server.egress import Egress, parse_routes
from server.live_config import LiveConfig, dialect_of, versions_of
from server.settings import Settings
from server.transport import NativeTransport, Timeouts, Transport
from server.upkeep import Upkeep, safely
from server.web.callers import Caller, static_callers
from server.zai.client import ZaiClient
from server.zai.identity import Credential
from state.batch import WriteBehind
from state.captcha import CaptchaPool
from state.chats import ChatLedger
from state.client_keys import ClientKeys
from state.connection import connect
from state.conversations import ConversationStore
from state.facts import Facts
from state.guests import GuestReserve
from state.instances import Instances, new_instance_id
from state.keys import Keys
from state.layout import migrate
from state.locks import Lock
from state.pacing import Pacer
from state.pool import TokenPool
from state.upstream_config import ConfigStore
from state.usage import UsageLog
from state.waf import WafBreaker

if TYPE_CHECKING:  # the handlers import the services: no cycle at run time
    from server.web.completion_handler import CompletionHandler

__all__ = ["VERSION", "Services", "make_services"]

VERSION = "0.1.0"


@dataclass(slots=True)
class Services:
    settings: Settings
    redis: Redis
    keys: Keys
    client: ZaiClient
    pool: TokenPool
    guests: GuestTokens | None
    instances: Instances
    tokens: TokenSource
    client_keys: ClientKeys
    usage: UsageLog
    captchas: CaptchaSource = field(default_factory=CaptchaSource)
    egress: Egress = field(default_factory=Egress)
    static_callers: list[Caller] = field(default_factory=list)  # one per AUTH_TOKEN(S) key
    catalogue: Catalogue | None = None
    chats: ThrowawayChats | None = None
    continuations: Continuations | None = None  # ZAI_CHATS=continue
    live: LiveConfig | None = None  # the live upstream config (PUT /v1/upstream/config)
    draining: bool = False
    configured: list[str] = field(default_factory=list)  # tokens from file and env
    # handlers with a completion in flight
    active: set["CompletionHandler"] = field(default_factory=set)
    upkeep: Upkeep = field(init=False)  # the background loops (server.upkeep)

    def __post_init__(self) -> None:
        self.upkeep = Upkeep(self)

    def __repr__(self) -> str:
        return f"<Services {self.instances.id} inflight={len(self.active)} {self.tokens!r}>"

    async def start(self) -> None:
        settings = self.settings
        # Before anything reads or writes the pool: an older release's key names move to
        # today's (replicas starting at once wait for the one that moves them).
        await safely("moving older key names", migrate(self.redis, self.keys))
        if self.live is not None:  # the overrides hold from the first request on
            await safely("live config", self.live.follow())
        await safely("register", self.instances.heartbeat(0))
        self.configured = configured_tokens(settings)
        if self.configured:
            await safely("load tokens", self.load(self.configured))
        if self.guests is not None and self.guests.reserve is not None:
            self.guests.refill_soon()
        self.upkeep.start()

    async def drain(self, deadline: float) -> int:
        """Stop taking work (readiness goes false) and wait up to ``deadline`` seconds for
        requests in flight; then end the rest with an error. Returns how many were ended."""
        self.draining = True
        await safely("deregister", self.instances.deregister())
        until = time.monotonic() + deadline
        while self.active and time.monotonic() < until:
            await asyncio.sleep(0.05)
        late = list(self.active)
        for handler in late:
            handler.abort(GatewayError("shutting_down"))
        until = time.monotonic() + 5
        while self.active and time.monotonic() < until:
            await asyncio.sleep(0.01)
        return len(late)

    async def stop(self) -> None:
        await self.upkeep.stop()
        if self.guests is not None:
            await self.guests.stop()
        if self.chats is not None:  # the deletes in flight; the ledger keeps the rest
            await self.chats.drain(2.0)
        if self.usage is not None:
            await safely("writing usage", self.usage.flush())
        await safely("sending the last lease releases", self.pool.flush())
        await self.pool.stop()
        await safely("deregister", self.instances.deregister())
        await safely("closing the Redis client", self.redis.aclose())
        await self.client.close()  # the upstream transport's connections

    async def listing_credentials(self) -> list[Credential]:
        """Tokens to read the upstream's model lists with: a pooled user token (a read, no
        cost) and, in anonymous mode, a fresh guest."""
        creds = []
        rows = [row for row in await self.pool.status() if row.state == "active"]
        if rows:
            token = (await self.pool.tokens()).get(rows[0].id)
            if token:
                creds.append(Credential(token, "", "user"))
        if self.guests is not None:
            creds.append(await self.client.guest_credential())
        return creds

    async def health_check(self, ids: list[str] | None = None) -> list[CheckResult]:
        grace = self.settings.pool_rotation_grace
        results = await check_tokens(self.pool, self.client, ids, grace=grace)
        if any(row.verdict == "unknown" for row in results):
            self.upkeep.pending_unreached()
        return results

    async def load(self, tokens: list[str]) -> None:
        """Put ``tokens`` in the shared pool and check the new ones (one replica checks)."""
        ids = await self.pool.add(tokens)
        states = {row.id: row.state for row in await self.pool.status()}
        pending = [tid for tid in ids if states.get(tid) == "pending"]
        logger.info("token pool: {} configured, {} new to check", len(ids), len(pending))
        if pending and await self.lock("startup-check", 60):
            results = await self.health_check(pending)
            for row in results:
                logger.info("token {}: {} {}", row.masked, row.verdict, row.reason)

    async def lock(self, name: str, seconds: float) -> bool:
        # Never released: it spaces the checks out (one replica per period), so it expires.
        return await Lock(self.redis, self.keys.lock(name), seconds).acquire()


def make_services(settings: Settings) -> Services:
    redis = connect(
        settings.redis_url,
        settings.redis_timeout,
        settings.redis_max_connections,
        cluster=settings.redis_cluster,
        ca_file=settings.redis_tls_ca_file,
    )
    keys = Keys(settings.redis_prefix)  # the same hash-tagged names on every kind of Redis
    instance_id = new_instance_id()
    breaker = WafBreaker(redis, keys, settings.waf_backoff_base, settings.waf_backoff_cap)
    # Made even with every gap 0 (then it books nothing): the live config may set gaps.
    pacer = Pacer(
        redis,
        keys,
        settings.pacing_min_gap_ms,
        settings.pacing_jitter_ms,
        settings.pacing_max_wait,
        settings.pacing_token_min_gap_ms,
    )
    egress = Egress(parse_routes(settings.upstream_proxies), breaker, pacer)
    egress.down_backoff = (settings.route_down_backoff_base, settings.route_down_backoff_cap)
    client = zai_client(settings, Facts(redis, keys), egress)
    egress.prober = client.probe_waf
    pool = TokenPool(
        redis,
        keys,
        cooldown_base=settings.pool_cooldown_base,
        cooldown_cap=settings.pool_cooldown_cap,
        max_concurrency=settings.pool_max_concurrency,
        lease_ttl=settings.lease_ttl,
        owner=instance_id,
        batch=WriteBehind(redis),  # the off-path writes: lease releases, the chat ledger
    )
    guests = None
    if settings.anonymous_mode:
        reserve = GuestReserve(
            redis, keys, settings.guest_reserve, max_size=settings.guest_reserve_max
        )
        guests = GuestTokens(client, reserve if settings.guest_reserve else None, pacer)
    # A shared Redis may hold tokens other replicas added; the embedded one only ours.
    pooled = bool(configured_tokens(settings) or settings.admin_token or settings.redis_url)
    tokens: TokenSource
    if pooled:
        tokens = PooledTokens(pool, guests)
    elif guests is not None:
        tokens = guests
    else:
        tokens = NoTokens()
    instances = Instances(redis, keys, instance_id, settings.instance_ttl, VERSION)
    captchas = CaptchaSource(
        settings.zai_captcha,
        CaptchaPool(redis, keys),
        settings.captcha_retry_after,
        sidecar(settings),
        settings.captcha_low_water,
    )
    services = Services(
        settings,
        redis,
        keys,
        client,
        pool,
        guests,
        instances,
        tokens,
        ClientKeys(redis, keys),
        UsageLog(redis, keys, settings.usage_retention_days),
        captchas=captchas,
        egress=egress,
        static_callers=static_callers(settings.api_keys),
    )
    if settings.zai_chats in ("throwaway", "continue"):
        # continue: requests that name no conversation are throwaway ones
        services.chats = throwaway_chats(settings, keys, client, egress, pool.batch)
    if settings.zai_chats == "continue":
        grace = settings.instance_ttl * 2  # as a throwaway chat's hold: two heartbeats
        store = ConversationStore(redis, keys, settings.zai_conversation_ttl, pool.batch, grace)
        services.continuations = Continuations(store, settings.zai_conversation_wait)
    services.live = LiveConfig(settings, ConfigStore(redis, keys), client, captchas, egress)
    services.catalogue = Catalogue(
        client,
        Facts(redis, keys),
        settings.zai_models_ttl,
        settings.zai_models == "live",
        services.listing_credentials,
    )
    return services


def sidecar(settings: Settings) -> Sidecar | None:
    if not settings.captcha_url:
        return None
    return Sidecar(
        settings.captcha_url,
        settings.captcha_scene,
        settings.captcha_region,
        settings.captcha_timeout,
    )


def throwaway_chats(
    settings: Settings, keys: Keys, client: ZaiClient, egress: Egress, batch: WriteBehind
) -> ThrowawayChats:
    redis = batch.redis

    async def pooled_token(tid: str) -> str | None:
        return cast(str | None, await redis.hget(keys.tokens, tid))

    async def waf_open() -> bool:  # every route blocked (or half-open): deletes wait
        return await egress.all_blocked()

    # A chat stays its replica's for two heartbeats without a renewal: then others may sweep.
    hold = settings.instance_ttl * 2
    ledger = ChatLedger(redis, keys, batch)
    return ThrowawayChats(
        ledger,
        client,
        hold,
        settings.zai_chat_retry,
        pooled_token,
        waf_open,
        guests=settings.zai_delete_guest_chats,
    )


def zai_client(
    settings: Settings, facts: Facts | None = None, egress: Egress | None = None
) -> ZaiClient:
    """The dialect's client, given the plain values it needs from the settings."""
    timeouts = Timeouts(
        connect=settings.upstream_connect_timeout,
        headers=settings.upstream_header_timeout,
        idle=settings.upstream_idle_timeout,
    )
    transport = upstream_transport(settings)
    return ZaiClient(
        dialect_of(settings), timeouts, versions_of(settings), facts, egress, transport
    )


def upstream_transport(settings: Settings) -> Transport:
    """``UPSTREAM_TRANSPORT``: the native client, or curl_cffi's browser fingerprint (an
    optional extra, imported only when asked for; the settings checked it is installed)."""
    if settings.upstream_transport == "native":
        return NativeTransport()
    from server.impersonate import Impersonator

    return Impersonator(settings.upstream_impersonate)
