"""Every knob of the gateway, read once from env vars and ``.env`` (pydantic-settings).

Owns the ``Settings`` model and ``load_settings()``, which turns a validation failure into one
plain line naming the variable (``SettingsError``) so start-up can stop with it. Every moving
value of the undocumented upstream (base URL, front-end version, signature key, timeouts) is a
setting here; ``.env.example`` documents each with its default.
"""

import functools
import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.core.models import find_model
from server.egress import parse_routes
from server.zai.endpoints import endpoints
from server.zai.signature import DEFAULT_KEY
from state.connection import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    cluster_params,
    is_cluster,
    is_sentinel,
    sentinel_params,
)

__all__ = ["Settings", "SettingsError", "first_error", "load_settings"]

CommaList = Annotated[list[str], NoDecode]
# Settings whose value is never echoed in a start-up error.
_SECRET = {
    "AUTH_TOKEN",
    "AUTH_TOKENS",
    "ZAI_TOKENS",
    "ADMIN_TOKEN",
    "UPSTREAM_PROXIES",
    "CAPTCHA_URL",
}


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # HTTP surface
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    drain_timeout: float = Field(30.0, ge=0)
    service_name: str = "zai-gateway"
    single_instance: Literal["auto", "on", "off"] = "auto"
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # The request line and headers together; over it: 414 (the line alone) or 431
    max_header_bytes: int = Field(65536, ge=4096)
    # Client connections one worker process keeps open; over it: 503 and closed
    max_connections: int = Field(4096, ge=1)
    # Seconds a connection may go without a whole request head: idle keep-alive, or a client
    # sending its request line and headers slowly (slowloris); then it is closed
    idle_connection_timeout: float = Field(75.0, gt=0)

    # Hostile input: how long a client may take to send its body once the headers are in
    body_timeout: float = Field(60.0, gt=0)

    # Browsers (CORS): origins allowed to call the API from a page; empty = off, * = any
    cors_origins: CommaList = []

    # Client API keys (what OpenAI/Anthropic clients send)
    auth_token: str = ""
    auth_tokens: CommaList = []
    skip_auth_token: bool = False

    # Upstream identity: guests (anonymous mode) and the shared pool of user tokens
    anonymous_mode: bool = True
    auth_tokens_file: Path | None = None
    zai_tokens: CommaList = []
    # Only the upstream's rate limits cool a token: briefly, then doubling per episode.
    pool_cooldown_base: float = Field(5.0, gt=0)
    pool_cooldown_cap: float = Field(900.0, gt=0)
    # One Z.AI account runs one conversation at a time (PROTOCOL.md section 6.7: a second one
    # gets "concurrent conversation limit"); no capture shows an account allowed more.
    pool_max_concurrency: int = Field(1, ge=0)
    pool_health_interval: float = Field(600.0, ge=0)
    self_check_interval: float = Field(0.0, ge=0)
    lease_ttl: float = Field(120.0, gt=0)
    pool_rotation_grace: float = Field(300.0, gt=0)  # seconds a rotated token stays marked
    guest_reserve: int = Field(4, ge=0, le=1000)
    guest_reserve_max: int = Field(500, ge=0, le=5000)  # how far demand may grow the reserve
    admin_token: str = ""

    # Claude model names (claude-opus-*, claude-sonnet-*, claude-haiku-*) map to these rows
    claude_opus_model: str = "GLM-4.7-Thinking"
    claude_sonnet_model: str = "GLM-4.7"
    claude_haiku_model: str = "GLM-4.5-Air"

    # Features
    tool_support: bool = True
    scan_limit: int = Field(200_000, ge=1)
    stream_holdback: int = Field(0, ge=0, le=100_000)
    debug_logging: bool = False
    # Traces (the otel extra): OTLP/HTTP collector base URL; empty = no tracing
    otel_exporter_otlp_endpoint: str = ""
    otel_service_name: str = "zai-gateway"

    # Captcha gate (issue 14): auto = when the upstream's /api/config says enable_captcha
    zai_captcha: Literal["auto", "on", "off"] = "auto"
    captcha_ttl_max: float = Field(600.0, gt=0)  # the longest ttl POST /v1/captcha accepts
    captcha_retry_after: float = Field(10.0, gt=0)
    # The solver sidecar (README "When chat.z.ai pushes back"): empty = none. The gateway POSTs
    # {"scene", "region"} and gets {"param", "expires_in"}; the scene is the page's Aliyun
    # Captcha V3 scene (PROTOCOL.md 6.2), sgp the Aliyun region of sites outside China.
    captcha_url: str = ""
    captcha_scene: str = "didk33e0"
    captcha_region: str = "sgp"
    captcha_timeout: float = Field(30.0, gt=0)  # seconds one solve may take
    # Live params the replicas keep in the pool by asking the sidecar ahead of need (0 = only
    # on demand), and how often each replica looks (one at a time asks, under a Redis lock)
    captcha_low_water: int = Field(2, ge=0, le=100)
    captcha_refill_interval: float = Field(2.0, gt=0)
    # The reference sidecar (python -m server.captcha.helper, the "captcha" extra): it drives
    # this Chromium (Playwright, no browser download) on the page, hooks the page's call to
    # the captcha's init function and answers the param its success callback gets.
    captcha_helper_listen: str = "127.0.0.1:8091"
    captcha_helper_page_url: str = "https://chat.z.ai/"
    captcha_helper_init: str = "initAliyunCaptcha"
    captcha_helper_callback: str = "success"  # the success callback (V2: captchaVerifyCallback)
    captcha_helper_trigger: str = ""  # a CSS selector to click; empty = the config's button
    captcha_helper_timeout: float = Field(25.0, gt=0)
    captcha_helper_browser: str = "/usr/bin/chromium"
    captcha_helper_pages: int = Field(2, ge=1, le=32)  # solves at once (one page each)
    captcha_helper_ttl: float = Field(75.0, gt=0)  # how long a fresh param lives upstream

    # WAF breaker (issue 14): shared by all replicas, seconds, doubling per block
    waf_backoff_base: float = Field(60.0, gt=0)
    waf_backoff_cap: float = Field(1800.0, gt=0)

    # Egress routes (issue 14): http:// (CONNECT) and socks5:// proxies and "direct";
    # empty = direct only. Each route has its own WAF breaker.
    upstream_proxies: CommaList = []
    # A route whose proxy cannot be reached is held back this long (s), doubling per failure
    route_down_backoff_base: float = Field(10.0, gt=0)
    route_down_backoff_cap: float = Field(300.0, gt=0)

    # Pacing (issue 14): a floor on the gap between upstream calls on each route, held by
    # every replica; the gap is drawn in [min, min + jitter] ms (PROTOCOL.md 6.3: 200-500 ms)
    pacing_min_gap_ms: int = Field(200, ge=0, le=60_000)
    pacing_jitter_ms: int = Field(300, ge=0, le=60_000)
    pacing_max_wait: float = Field(30.0, ge=0)
    # ... and between calls with one pooled token, whichever route they take (0 = off: the WAF
    # keys on the address, which the route gap covers; guests are one-shot and never paced so)
    pacing_token_min_gap_ms: int = Field(0, ge=0, le=600_000)

    # State
    redis_url: str = ""
    redis_prefix: str = "zai:"
    # The REDIS_URL redis:// or rediss:// endpoint is a Redis Cluster (as redis+cluster://)
    redis_cluster: bool = False
    redis_timeout: float = Field(0.5, gt=0)
    redis_max_connections: int = Field(64, ge=1)
    # A CA bundle (PEM) the rediss:// schemes check the server's certificate against; empty =
    # the system's trusted authorities
    redis_tls_ca_file: str = ""
    instance_ttl: float = Field(15.0, gt=0)

    # Responses API: how long a stored response (store, previous_response_id) is kept; 0 = none
    responses_ttl: float = Field(3600.0, ge=0)

    # Vision: images per request (the page takes 10), bytes per image (the page: up to 50 MB),
    # how long fetching an http(s) image may take, whether a host on a private address may
    # be fetched, and how long an uploaded image's file id is reused (0 = upload every time)
    image_max_count: int = Field(10, ge=1, le=50)
    image_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024)
    image_fetch_timeout: float = Field(15.0, gt=0)
    image_fetch_private: bool = False
    image_cache_ttl: float = Field(3600.0, ge=0)
    # A request with images to a model without vision is served by this model (a row with
    # vision, e.g. GLM-4.6V); empty: such a request is a 400 naming the image
    vision_model: str = ""

    # Usage per client key (counted in memory, written to Redis every interval)
    usage_flush_interval: float = Field(1.0, gt=0)
    usage_retention_days: int = Field(90, ge=1)

    # The upstream dialect: every moving value is here
    zai_base_url: str = "https://chat.z.ai"
    zai_fe_version: str = ""
    zai_fe_version_fallback: str = "prod-fe-1.1.95"
    zai_fe_version_ttl: float = Field(3600.0, gt=0)
    zai_signature_key: str = DEFAULT_KEY
    # The browser the upstream sees: each header a setting (empty = not sent), matching
    # UPSTREAM_IMPERSONATE's Chrome (a User-Agent that disagrees with the TLS is a tell)
    zai_user_agent: str = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/152.0.0.0 Safari/537.36"
    )
    zai_sec_ch_ua: str = '"Chromium";v="152", "Not?A_Brand";v="24", "Google Chrome";v="152"'
    zai_sec_ch_ua_mobile: str = "?0"
    zai_sec_ch_ua_platform: str = '"Windows"'
    zai_accept_language: str = "en-US,en;q=0.9"
    zai_origin: str = ""  # empty: ZAI_BASE_URL
    zai_referer: str = ""  # empty: the page the call is made from (a chat's, or the home page)
    zai_history: Literal["messages", "fold"] = "messages"
    # true: each fresh chat is created first with POST /api/v1/chats/new, as the page does
    # (PROTOCOL.md section 6.4), for the day a completion naming a chat it never made is refused
    zai_create_chats: bool = False
    # A JSON object moving upstream endpoints, e.g. {"completions": "/api/v3/chat/completions"}
    # (names: server/zai/endpoints.py); the rest keep their paths
    zai_paths: dict[str, str] = {}
    # seconds between each replica's reads of the live upstream config (PUT
    # /v1/upstream/config): a change reaches every replica within this
    upstream_config_poll: float = Field(2.0, gt=0, le=300)
    # live: /v1/models and model names follow the upstream's GET /api/models (shared in
    # Redis for ZAI_MODELS_TTL seconds) over the built-in table; static: the table alone
    zai_models: Literal["live", "static"] = "live"
    zai_models_ttl: float = Field(300.0, gt=0)
    # throwaway: every request's upstream chat is deleted after it (in the background,
    # retried by any replica); keep: chats stay in the account (the behaviour before);
    # continue: a client conversation goes on in one upstream chat (only the new turn sent)
    zai_chats: Literal["throwaway", "keep", "continue"] = "throwaway"
    # continue: seconds a conversation's mapping lives after its last turn
    zai_conversation_ttl: float = Field(21600.0, gt=0)
    # continue: seconds a turn waits for the conversation's previous turn before a 409
    zai_conversation_wait: float = Field(10.0, ge=0)
    zai_chat_retry: float = Field(30.0, gt=0)  # seconds before a failed delete is retried
    # Delete guests' chats too (each guest serves one request and is never used again)
    zai_delete_guest_chats: bool = False
    # native: the built-in HTTP/1.1 client (Python's TLS); impersonate: libcurl through
    # curl_cffi with a browser's TLS and HTTP/2 fingerprint (the impersonate extra)
    upstream_transport: Literal["native", "impersonate"] = "native"
    upstream_impersonate: str = "chrome152"
    upstream_connect_timeout: float = Field(10.0, gt=0)
    upstream_header_timeout: float = Field(60.0, gt=0)
    upstream_idle_timeout: float = Field(120.0, gt=0)
    upstream_retries: int = Field(2, ge=0, le=10)
    # The longest a client waits with nothing: a non-streamed answer must be whole within it,
    # a stream must have begun (then UPSTREAM_IDLE_TIMEOUT bounds each silence)
    request_timeout: float = Field(300.0, gt=0)

    @field_validator("auth_tokens", "zai_tokens", "cors_origins", "upstream_proxies", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("claude_opus_model", "claude_sonnet_model", "claude_haiku_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if find_model(value) is None:
            raise ValueError("is not a model of the table (see GET /v1/models)")
        return value

    @field_validator("vision_model")
    @classmethod
    def _vision_model(cls, value: str) -> str:
        if not value:
            return value
        found = find_model(value)
        if found is None or not found.vision:
            raise ValueError("is not a model of the table with vision (see GET /v1/models)")
        return value

    @field_validator("zai_history", mode="before")
    @classmethod
    def _history(cls, value: object) -> object:
        return "fold" if value == "flatten" else value  # its name before issue 15

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        schemes = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
        if value and not value.startswith(schemes):
            raise ValueError(f"must start with {', '.join(schemes[:-1])} or {schemes[-1]}")
        if is_sentinel(value):
            sentinel_params(value)  # a ValueError names what is missing
        if is_cluster(value):
            cluster_params(value)
        return value

    @field_validator("zai_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("upstream_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        parse_routes(value)  # a bad entry stops start-up with its reason (never its password)
        return value

    @field_validator("captcha_url")
    @classmethod
    def _captcha_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be empty or start with http:// or https://")
        return value

    @field_validator("captcha_helper_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, like 127.0.0.1:8091")
        return value

    @field_validator("upstream_transport")
    @classmethod
    def _transport(cls, value: str) -> str:
        if value == "impersonate" and importlib.util.find_spec("curl_cffi") is None:
            raise ValueError(
                "impersonate needs the curl_cffi package, which is not installed: install "
                "the gateway with its impersonate extra (pip install 'zai-gateway[impersonate]'"
                ", or RUN_EXTRAS=impersonate ./run), or set UPSTREAM_TRANSPORT=native"
            )
        return value

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otel(cls, value: str) -> str:
        if not value:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be the collector's http(s) base URL, like http://otel:4318")
        if importlib.util.find_spec("opentelemetry.sdk") is None:
            raise ValueError(
                "traces need the opentelemetry SDK, which is not installed: install the "
                "gateway with its otel extra (pip install 'zai-gateway[otel]', or "
                "RUN_EXTRAS=otel ./run), or leave OTEL_EXPORTER_OTLP_ENDPOINT empty"
            )
        return value

    @field_validator("zai_paths")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        endpoints(value)  # a ValueError names the bad endpoint
        return value

    @field_validator("zai_fe_version")
    @classmethod
    def _fe_version(cls, value: str) -> str:
        if value and not value.startswith("prod-fe-"):
            raise ValueError("must look like prod-fe-1.1.95")
        return value

    @field_validator("auth_tokens_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("auth_tokens_file")
    @classmethod
    def _tokens_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("redis_tls_ca_file")
    @classmethod
    def _ca_file(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _impersonation(self) -> "Settings":
        if self.upstream_transport == "impersonate":
            from curl_cffi import Curl  # the optional extra, there when impersonate is asked

            if Curl().impersonate(self.upstream_impersonate, default_headers=False):
                raise ValueError(
                    f"UPSTREAM_IMPERSONATE: curl_cffi cannot impersonate "
                    f"{self.upstream_impersonate!r} (e.g. chrome152)"
                )
        return self

    @model_validator(mode="after")
    def _cluster(self) -> "Settings":
        if self.redis_cluster and not self.redis_url.startswith(
            ("redis://", "rediss://", *CLUSTER_SCHEMES)
        ):
            raise ValueError(
                "REDIS_CLUSTER: needs the cluster's address in REDIS_URL, e.g. "
                "REDIS_URL=redis://host:6379 (rediss:// for TLS; not sentinel or unix)"
            )
        return self

    @model_validator(mode="after")
    def _some_key(self) -> "Settings":
        if not self.skip_auth_token and not self.api_keys and not self.admin_token:
            raise ValueError(
                "AUTH_TOKEN: set the key your clients will send, e.g. "
                "`AUTH_TOKEN=sk-choose-a-key ./run` (several: AUTH_TOKENS=k1,k2; issued ones: "
                "ADMIN_TOKEN and POST /v1/keys; none: SKIP_AUTH_TOKEN=true, open to anyone)"
            )
        return self

    @functools.cached_property  # read by every request's key check; not a live setting
    def api_keys(self) -> tuple[str, ...]:
        keys = [self.auth_token, *self.auth_tokens] if self.auth_token else self.auth_tokens
        return tuple(dict.fromkeys(k for k in keys if k))


def first_error(exc: ValidationError) -> tuple[str, str, Any]:
    """The first problem pydantic found: (the setting's name, what is wrong in plain words,
    the value given), for the start-up line and the live config's 400 alike."""
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else ""
    return name, err["msg"].removeprefix("Value error, "), err.get("input")


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise ``SettingsError`` with one line naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        name, msg, given = first_error(exc)
        name = name.upper()
        shown = "not shown: it may hold credentials" if name in _SECRET else repr(given)
        line = msg if not name else f"{name}: {msg} (got {shown})"
        raise SettingsError(f"invalid setting {line}") from None
