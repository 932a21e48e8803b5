"""The start-up banner: what someone who just typed ``./run`` needs to know in a few lines.

Owns ``banner()`` and ``mask_url()``. After the first worker listens it says where to point a
client and the docs, which Redis holds the shared state (the embedded fakeredis, or the URL
with its password masked), which TLS the upstream sees (a WAF looks at it), how many pooled
Z.AI tokens there are and in which state, and whether anonymous (guest) mode stands in, with
the setting that changes each. The ``listening on`` line itself stays the one every worker
prints.
"""

from collections import Counter
from urllib.parse import urlsplit, urlunsplit

from server.settings import Settings

__all__ = ["banner", "mask_url"]

_STATES = ("active", "pending", "cooling", "dead")  # the order they are reported in
_ANY_HOST = {"0.0.0.0", "::", ""}


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (a Redis URL is printed, never a secret).

    >>> mask_url("rediss://:s3cret@redis.example:6380/0")
    'rediss://:***@redis.example:6380/0'
    >>> mask_url("redis://gw:pw@10.0.0.5/1")
    'redis://gw:***@10.0.0.5/1'
    >>> mask_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _base(settings: Settings) -> str:
    host = settings.listen_host
    host = "localhost" if host in _ANY_HOST else f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.listen_port}"


def _tokens(states: list[str] | None) -> str:
    if states is None:
        return "pooled tokens unknown: Redis did not answer"
    count = Counter(states)
    total = sum(count.values())
    if not total:
        return "no pooled Z.AI tokens (add them with AUTH_TOKENS_FILE or ZAI_TOKENS)"
    detail = ", ".join(f"{count[state]} {state}" for state in _STATES if count[state])
    return f"{total} pooled Z.AI token{'s' if total != 1 else ''} ({detail})"


def _anonymous(settings: Settings, pooled: bool) -> str:
    if settings.anonymous_mode:
        stands_in = "when no pooled token is free" if pooled else "for every request"
        return f"anonymous mode on: a fresh guest token {stands_in} (ANONYMOUS_MODE=false: off)"
    if pooled:
        return "anonymous mode off: requests use pooled tokens only"
    return "anonymous mode off and no pooled token: every request is a 503 until tokens are added"


def _transport(settings: Settings) -> str:
    if settings.upstream_transport == "impersonate":
        return f"{settings.upstream_impersonate}'s TLS and HTTP/2 fingerprint (UPSTREAM_TRANSPORT)"
    return "Python's TLS (UPSTREAM_TRANSPORT=impersonate: Chrome's)"


def banner(settings: Settings, states: list[str] | None) -> list[str]:
    """The lines to log once at start, given each pooled token's state (None: unknown).

    >>> from server.settings import load_settings
    >>> s = load_settings(auth_token="k", listen_port=9000, redis_url="redis://:pw@r:6379/0")
    >>> print("\\n".join(banner(s, ["active", "active", "dead"])))
    docs: http://localhost:9000/docs (OpenAI base URL http://localhost:9000/v1, Anthropic http://localhost:9000)
    redis: redis://:***@r:6379/0, shared by every worker and replica
    upstream: https://chat.z.ai over Python's TLS (UPSTREAM_TRANSPORT=impersonate: Chrome's)
    tokens: 3 pooled Z.AI tokens (2 active, 1 dead)
    anonymous mode on: a fresh guest token when no pooled token is free (ANONYMOUS_MODE=false: off)
    """
    base = _base(settings)
    if settings.redis_url:
        redis = f"{mask_url(settings.redis_url)}, shared by every worker and replica"
    else:
        redis = "embedded fakeredis, this process only (REDIS_URL shares it between replicas)"
    return [
        f"docs: {base}/docs (OpenAI base URL {base}/v1, Anthropic {base})",
        f"redis: {redis}",
        f"upstream: {settings.zai_base_url} over {_transport(settings)}",
        f"tokens: {_tokens(states)}",
        _anonymous(settings, bool(states)),
    ]
