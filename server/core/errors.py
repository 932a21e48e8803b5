"""What every failure means for the client, as one table.

Owns ``GatewayError``, the ``RULES`` table and ``shown`` (client text made safe to log or
echo). A failure has a *kind* (a short code); its row says the HTTP status the client gets, the
OpenAI error ``type``, whether a retry may help (only ever before a byte reached the client),
what it says about the upstream token used (for the pool: ``spare``, ``cooldown`` or ``dead``),
whether the front-end version must be re-read, and the plain-words message. The upstream
dialect decides which kind an upstream answer is (PROTOCOL.md section 4); this table is section
5. The API faces render a ``GatewayError`` in their own error shape.
"""

import re
from dataclasses import dataclass

__all__ = ["RULES", "GatewayError", "Rule", "client_should_retry", "shown"]


@dataclass(frozen=True, slots=True)
class Rule:
    status: int
    type: str
    retry: int = 0  # at most this many retries (capped by UPSTREAM_RETRIES)
    # What the failure says about the upstream token used: "spare" nothing (the upstream's
    # trouble, not the token's: it goes back untouched), "cooldown" (its own rate limit),
    # "dead" (rejected). Only failures about the token may take it out of rotation, so one
    # outage cannot cool the whole pool.
    token: str = "spare"
    refresh_version: bool = False
    message: str = "{detail}"
    # Retry-After (seconds) when the failure passes by itself and the raiser knows no better
    retry_after: float | None = None


_UPSTREAM = "upstream_error"

RULES: dict[str, Rule] = {
    # The client's own mistakes
    "invalid_request": Rule(400, "invalid_request_error", message="{detail}"),
    "invalid_json": Rule(
        400, "invalid_request_error", message="the body is not valid JSON: {detail}"
    ),
    "invalid_api_key": Rule(401, "authentication_error", message="{detail}"),
    "model_not_found": Rule(404, "invalid_request_error", message="{detail}"),
    "not_found": Rule(404, "invalid_request_error", message="{detail}"),
    "method_not_allowed": Rule(405, "invalid_request_error", message="{detail}"),
    "payload_too_large": Rule(413, "invalid_request_error", message="{detail}"),
    "forbidden": Rule(403, "permission_error", message="{detail}"),
    "model_not_allowed": Rule(
        403, "permission_error", message="this API key may not use model {model} ({detail})"
    ),
    "key_rate_limited": Rule(
        429,
        "rate_limit_error",
        message="this API key's limit of {detail} is reached: retry after the Retry-After "
        "seconds (the x-ratelimit-* headers say what is left)",
    ),
    "uri_too_long": Rule(414, "invalid_request_error", message="{detail} (MAX_HEADER_BYTES)"),
    "headers_too_large": Rule(431, "invalid_request_error", message="{detail} (MAX_HEADER_BYTES)"),
    # The gateway cannot serve the request
    "pool_exhausted": Rule(503, "server_error", message="{detail}"),
    "too_many_connections": Rule(
        503, "server_error", message="{detail}: retry in a moment, or on another instance"
    ),
    "shutting_down": Rule(
        503,
        "server_error",
        message="this gateway instance is shutting down and its drain deadline passed: "
        "retry the request (another instance will take it)",
    ),
    "state_unavailable": Rule(
        503,
        "server_error",
        message="the shared state store (Redis) is unreachable, so no pooled upstream token "
        "can be leased: {detail}",
        # a Redis failover (Sentinel, Cluster) or restart is over in seconds
        retry_after=1,
    ),
    "pacing_backlog": Rule(
        429,
        "rate_limit_error",
        message="the gateway spaces its upstream calls (PACING_MIN_GAP_MS on each egress route, "
        "PACING_TOKEN_MIN_GAP_MS per pooled token, shared by every replica, so the upstream's "
        "firewall does not block it) and the queue "
        "is longer than PACING_MAX_WAIT ({detail}): retry after Retry-After, or add egress "
        "routes (UPSTREAM_PROXIES)",
    ),
    "internal": Rule(500, "server_error", message="internal error in the gateway: {detail}"),
    "structured_output_invalid": Rule(
        502,
        "server_error",
        message="the model's answer did not follow the requested JSON schema, also when asked"
        " again: {detail}",
    ),
    "no_upstream_token": Rule(503, "server_error", message="{detail}"),
    # ZAI_CHATS=continue: one turn per chat at a time. 409 as OpenAI answers a conflict; its
    # type is invalid_request_error (Anthropic's list has no conflict type, and this is about
    # the request's timing, not a fault of the server; the SDKs retry 409 on their own).
    "conversation_busy": Rule(
        409,
        "invalid_request_error",
        message="{detail} (ZAI_CHATS=continue runs one turn per conversation at a time, and "
        "the gateway waited ZAI_CONVERSATION_WAIT seconds): retry when the other turn has "
        "ended, or send concurrent requests with different conversation ids",
    ),
    # What the upstream said (PROTOCOL.md section 5)
    "token_rejected": Rule(
        502,
        _UPSTREAM,
        retry=2,
        token="dead",
        message="the upstream rejected its access token ({detail}); no other token worked",
    ),
    "unavailable": Rule(
        502,
        _UPSTREAM,
        retry=2,
        message="the upstream is unavailable: {detail}",
    ),
    "timeout": Rule(
        504,
        _UPSTREAM,
        retry=2,
        message="the upstream timed out: {detail}",
    ),
    "stalled": Rule(
        504,
        _UPSTREAM,
        retry=1,  # a stall midway costs a whole UPSTREAM_IDLE_TIMEOUT: one more try at most
        message="the upstream stopped sending midway through the answer: {detail}",
    ),
    "waf_blocked": Rule(
        503,
        _UPSTREAM,
        message="the upstream's firewall (Aliyun WAF) is blocking this server's IP address "
        "({detail}); every replica holds completions back until the Retry-After time (retrying "
        "sooner makes the block longer); lower the request rate or use another egress IP",
    ),
    "route_unreachable": Rule(
        502,
        _UPSTREAM,
        message="an egress proxy cannot be reached ({detail}); every replica holds that route "
        "back until the Retry-After time and sends by the other routes: check the proxy, or "
        "its entry in UPSTREAM_PROXIES",
    ),
    "version_outdated": Rule(
        502,
        _UPSTREAM,
        retry=1,
        refresh_version=True,
        message="the upstream says the front-end version is outdated ({detail}); re-reading it "
        "did not help: set ZAI_FE_VERSION to the current prod-fe-x.y.z of the chat.z.ai page "
        "(live, for every replica: PUT /v1/upstream/config)",
    ),
    "signature_rejected": Rule(
        502,
        _UPSTREAM,
        retry=1,
        message="the upstream rejected the request signature ({detail}): the signing scheme or "
        "ZAI_SIGNATURE_KEY has probably changed upstream (a new key can be set live: PUT "
        "/v1/upstream/config)",
    ),
    "model_forbidden": Rule(
        403,
        "permission_error",
        message="model {model} is not available to guest (anonymous) upstream tokens: it needs "
        "a Z.AI user token (AUTH_TOKENS_FILE), or choose another model ({detail})",
    ),
    "captcha_required": Rule(
        503,
        _UPSTREAM,
        retry=1,  # only with another param in hand; never the token's fault
        message="the upstream demands a fresh single-use captcha_verify_param for this "
        "completion ({detail}): send one in the X-Zai-Captcha header (or the body field "
        "zai_captcha), have the operator or a solver push params to the shared pool with "
        "POST /v1/captcha, or run a solver sidecar (CAPTCHA_URL); retry once one is there",
    ),
    "rate_limited": Rule(
        429,
        "rate_limit_error",
        retry=2,
        token="cooldown",
        message="the upstream is rate limiting or too busy: {detail}",
    ),
    "session_busy": Rule(
        409,
        "invalid_request_error",
        retry=2,  # the upstream may be finishing the chat's previous turn: asked again shortly
        message="the upstream is still answering another turn of this conversation's chat "
        "({detail}); retry when it has ended",
    ),
    "bad_response": Rule(
        502,
        _UPSTREAM,
        retry=1,
        message="the upstream answered something unexpected: {detail}",
    ),
}


def client_should_retry(status: int) -> bool:
    """Whether the client may retry an answer of this status (its ``x-should-retry``): a 4xx
    other than 408/409/429 is the request's own fault, and sending it again cannot fix it.

    >>> client_should_retry(401), client_should_retry(429), client_should_retry(503)
    (False, True, True)
    """
    return status >= 500 or status in (408, 409, 429)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(text: str, limit: int = 100) -> str:
    """``text`` as a client wrote it, made safe for a log line or an error message: control
    characters escaped (no forged log lines, no terminal escapes) and long text cut.

    >>> shown("GLM\\r\\n1 INFO forged\\x1b[31m")
    'GLM\\\\r\\\\n1 INFO forged\\\\x1b[31m'
    >>> shown("x" * 500, limit=3)
    'xxx... (500 characters)'
    """
    safe = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode(), text[:limit])
    return safe if len(text) <= limit else f"{safe}... ({len(text)} characters)"


class GatewayError(Exception):
    """A failure the client must hear about; ``kind`` is a key of ``RULES``.

    >>> err = GatewayError("model_not_found", "model 'x' does not exist", param="model")
    >>> err.rule.status, err.param
    (404, 'model')
    """

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        param: str | None = None,
        model: str = "",
        retry_after: float | None = None,
    ) -> None:
        if kind not in RULES:
            raise ValueError(f"unknown failure kind {kind!r}; add a row to RULES")
        self.kind = kind
        self.rule = RULES[kind]
        self.detail = detail
        self.param = param
        self.model = model
        self.retry_after = self.rule.retry_after if retry_after is None else retry_after
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"<GatewayError {self.kind} {self.rule.status}: {self.detail!r}>"

    @property
    def message(self) -> str:
        return self.rule.message.format(detail=self.detail or "no detail", model=self.model)

    @property
    def status(self) -> int:
        return self.rule.status
