"""The live upstream config: the moving settings an operator changes at run time, for all replicas.

Owns the tables (``LIVE``: settings that take effect without a restart, by what they move;
``RESTART``: the upstream settings that need one, shown read-only) and ``LiveConfig``, this
process's follower. The overrides live in Redis (``state.upstream_config``); each replica reads
the store's revision every ``UPSTREAM_CONFIG_POLL`` seconds in its upkeep (never on a request's
path) and, when it moved, applies the overrides over its own settings: the dialect (front-end
version, signature key, endpoint paths, browser headers, history), the captcha switch, the
pacing gaps and the WAF back-off. A value is checked by the settings' own validators, so the
API takes exactly what the environment variable would, and a bad one is refused with its name.
"""

from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger
from pydantic import ValidationError

from server.captcha.source import CaptchaSource
from server.core.errors import GatewayError
from server.egress import Egress
from server.settings import Settings, first_error
from server.zai.client import VersionPolicy, ZaiClient
from server.zai.endpoints import endpoints
from server.zai.request import Dialect
from state.keys import mask
from state.upstream_config import ConfigStore
from state.waf import WafBreaker

__all__ = ["LIVE", "RESTART", "LiveConfig", "dialect_of", "versions_of"]

_DIALECT = (
    "zai_fe_version",
    "zai_fe_version_fallback",
    "zai_fe_version_ttl",
    "zai_signature_key",
    "zai_paths",
    "zai_user_agent",
    "zai_sec_ch_ua",
    "zai_sec_ch_ua_mobile",
    "zai_sec_ch_ua_platform",
    "zai_accept_language",
    "zai_origin",
    "zai_referer",
    "zai_history",
    "zai_create_chats",
)
_PACING = ("pacing_min_gap_ms", "pacing_jitter_ms", "pacing_max_wait", "pacing_token_min_gap_ms")
_WAF = ("waf_backoff_base", "waf_backoff_cap")
# setting -> what it moves (the part of the process re-made when it changes)
LIVE: dict[str, str] = {
    **dict.fromkeys(_DIALECT, "dialect"),
    "zai_captcha": "captcha",
    **dict.fromkeys(_PACING, "pacing"),
    **dict.fromkeys(_WAF, "waf"),
}
# Upstream settings that are read once, at start: new connections, new loops, new routes.
RESTART = (
    "zai_base_url",
    "upstream_transport",
    "upstream_impersonate",
    "upstream_proxies",
    "zai_chats",
    "zai_models",
)
# how a value is shown (an answer, a log line): secrets masked, proxies by number only
_SHOWN: dict[str, Callable[[Any], Any]] = {
    "zai_signature_key": mask,
    "upstream_proxies": lambda routes: [f"route {i + 1}" for i in range(len(routes))],
}


def dialect_of(settings: Settings) -> Dialect:
    """The dialect's moving values, from the settings (plain values: the dialect never reads
    the application's settings itself)."""
    return Dialect(
        base_url=settings.zai_base_url,
        signature_key=settings.zai_signature_key,
        user_agent=settings.zai_user_agent,
        history=settings.zai_history,
        create_chats=settings.zai_create_chats,
        origin=settings.zai_origin,
        referer=settings.zai_referer,
        sec_ch_ua=settings.zai_sec_ch_ua,
        sec_ch_ua_mobile=settings.zai_sec_ch_ua_mobile,
        sec_ch_ua_platform=settings.zai_sec_ch_ua_platform,
        accept_language=settings.zai_accept_language,
        paths=endpoints(settings.zai_paths),
    )


def versions_of(settings: Settings) -> VersionPolicy:
    return VersionPolicy(
        pinned=settings.zai_fe_version,
        fallback=settings.zai_fe_version_fallback,
        ttl=settings.zai_fe_version_ttl,
    )


def checked(settings: Settings, values: Mapping[str, Any]) -> Settings:
    """``settings`` with ``values`` put in, each checked as its environment variable is;
    ``invalid_request`` naming the first unknown, restart-only or bad one."""
    out = settings.model_copy()
    for name, value in values.items():
        if name in RESTART:
            raise GatewayError(
                "invalid_request",
                f"{name} is read at start only: set {name.upper()} and restart the replicas",
                param=name,
            )
        if name not in LIVE:
            raise GatewayError(
                "invalid_request",
                f"{name} is not a live upstream setting (live: {', '.join(LIVE)})",
                param=name,
            )
        if value is None:
            value = getattr(settings, name)  # back to the environment's value
        try:
            Settings.__pydantic_validator__.validate_assignment(out, name, value)
        except ValidationError as exc:
            msg = first_error(exc)[1]
            raise GatewayError("invalid_request", f"{name}: {msg}", param=name) from None
    return out


class LiveConfig:
    """Applies the stored overrides to this process's parts; ``settings`` is what the
    environment said, ``current`` what holds now."""

    def __init__(
        self,
        settings: Settings,
        store: ConfigStore,
        client: ZaiClient,
        captchas: CaptchaSource,
        egress: Egress,
    ) -> None:
        self.settings = settings
        self.current = settings
        self.store = store
        self.client = client
        self.captchas = captchas
        self.egress = egress
        self.rev = 0
        self.overrides: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<LiveConfig rev={self.rev} {sorted(self.overrides)}>"

    async def follow(self) -> bool:
        """Apply the stored overrides if they moved since the last look (one small read when
        they did not); True when something was applied."""
        if await self.store.rev() == self.rev:
            return False
        rev, values = await self.store.read()
        self.apply(rev, values)
        return True

    async def change(self, values: Mapping[str, Any]) -> None:
        """Check ``values`` (None: back to the environment's), store them for every replica
        and apply them here at once."""
        checked(self.current, values)  # refuses before anything is stored
        await self.store.change(dict(values))
        await self.follow()

    async def reset(self) -> None:
        await self.store.clear()
        await self.follow()

    def apply(self, rev: int, values: Mapping[str, Any]) -> None:
        """Make ``values`` (over the environment's settings) what this process uses."""
        current, good = self.settings, {}
        for name, value in values.items():
            try:
                current = checked(current, {name: value})
            except GatewayError as exc:  # a hand edit in Redis: kept out, said once
                logger.warning("live config: ignoring {}: {}", name, exc.detail)
                continue
            good[name] = value
        moved = {LIVE[name] for name in set(good) | set(self.overrides)}
        self.current, self.rev, self.overrides = current, rev, good
        for part in sorted(moved):
            _APPLY[part](self, current)
        if moved:
            shown = {name: self.shown(name, value) for name, value in good.items()}
            logger.info("live config rev {}: {} (moved: {})", rev, shown, ", ".join(sorted(moved)))

    def shown(self, name: str, value: Any) -> Any:
        show = _SHOWN.get(name)
        return show(value) if show is not None else value

    def view(self) -> dict[str, Any]:
        """The GET answer: every live setting's value and where it comes from, the
        restart-only ones' values, secrets masked."""
        live = {
            name: {
                "value": self.shown(name, getattr(self.current, name)),
                "source": "live" if name in self.overrides else "environment",
                "moves": part,
            }
            for name, part in LIVE.items()
        }
        restart = {name: self.shown(name, getattr(self.settings, name)) for name in RESTART}
        return {
            "rev": self.rev,
            "live": live,
            "restart": restart,
            "poll_seconds": self.settings.upstream_config_poll,
        }


def _dialect(live: LiveConfig, settings: Settings) -> None:
    live.client.reconfigure(dialect_of(settings), versions_of(settings))


def _captcha(live: LiveConfig, settings: Settings) -> None:
    live.captchas.mode = settings.zai_captcha


def _pacing(live: LiveConfig, settings: Settings) -> None:
    pacer = live.egress.pacer
    if pacer is None:  # pacing off at start and with no store to pace in (never here)
        return
    pacer.min_gap_ms = settings.pacing_min_gap_ms
    pacer.jitter_ms = settings.pacing_jitter_ms
    pacer.max_wait = settings.pacing_max_wait
    pacer.token_gap_ms = settings.pacing_token_min_gap_ms


def _waf(live: LiveConfig, settings: Settings) -> None:
    breaker: WafBreaker | None = live.egress.breaker
    if breaker is not None:
        breaker.base, breaker.cap = settings.waf_backoff_base, settings.waf_backoff_cap


_APPLY: dict[str, Callable[[LiveConfig, Settings], None]] = {
    "dialect": _dialect,
    "captcha": _captcha,
    "pacing": _pacing,
    "waf": _waf,
}
