"""Which failure kind an upstream answer is (PROTOCOL.md section 4), as tables.

Owns ``http_failure`` (an HTTP status and body) and ``inband_failure`` (an ``error`` object in
a 200 stream). The kinds are rows of ``server.core.errors.RULES``, which says what each means for
the client. A content-security stop is not a failure: ``is_content_filter`` tells it apart,
and the stream ends with ``finish_reason: content_filter``.
"""

import msgspec

from server.core.errors import GatewayError
from server.zai.frames import UpstreamError

__all__ = ["http_failure", "inband_failure", "is_content_filter"]

HTTP_KINDS: dict[int, str] = {
    401: "token_rejected",
    403: "token_rejected",
    409: "session_busy",  # one turn per chat at a time (PROTOCOL.md section 6.4)
    426: "version_outdated",
    429: "rate_limited",
}

INBAND_KINDS: dict[int | str, str] = {
    401: "token_rejected",
    403: "model_forbidden",
    426: "version_outdated",
    429: "rate_limited",
    "FRONTEND_CAPTCHA_REQUIRED": "captcha_required",
    "F018": "captcha_required",  # a stale or reused param (PROTOCOL.md section 6.2)
    "F019": "captcha_required",
    "MODEL_CONCURRENCY_LIMIT": "rate_limited",  # the account's concurrency (section 6.7)
    "RATE_LIMIT_EXCEEDED": "rate_limited",
    "TOO_MANY_REQUESTS": "rate_limited",
    409: "session_busy",
    "SESSION_BUSY": "session_busy",
}

_SIGNATURE_MARK = "Signature validation failed"
# The Aliyun WAF's block page (PROTOCOL.md section 6.3): status 405 or 403, HTML, one of these.
_WAF_MARKS = ("blocked as it may cause potential threats", "errors.aliyun.com", "您的访问被阻断")


def http_failure(status: int, body: bytes, model: str = "") -> GatewayError:
    text = body[:2000].decode("utf-8", "replace")
    if status == 400 and _SIGNATURE_MARK in text:
        return GatewayError("signature_rejected", f"HTTP 400: {_detail(text)}", model=model)
    html = text.lstrip().startswith("<")
    if status in (403, 405) and html and _is_waf_page(body):
        return GatewayError("waf_blocked", f"HTTP {status} block page", model=model)
    kind = HTTP_KINDS.get(status) or ("unavailable" if status >= 500 else "bad_response")
    detail = f"HTTP {status}" if html else f"HTTP {status}: {_detail(text)}"
    return GatewayError(kind, detail, model=model)


def _is_waf_page(body: bytes) -> bool:
    page = body.decode("utf-8", "replace")
    return any(mark in page for mark in _WAF_MARKS)


def inband_failure(error: UpstreamError, model: str = "") -> GatewayError:
    kind = INBAND_KINDS.get(error.code or "") or INBAND_KINDS.get(error.error_code or "")
    detail = error.detail or str(error.code or error.error_code or "unknown error")
    if error.code is not None:
        detail = f"{detail} (code {error.code})"
    return GatewayError(kind or "bad_response", detail, model=model)


def is_content_filter(error: UpstreamError) -> bool:
    return "Content Security" in (error.detail or "") or (
        error.code is None and error.content is not None
    )


def _detail(text: str) -> str:
    """The ``detail`` of a JSON error body, else the text itself, shortened."""
    try:
        body = msgspec.json.decode(text)
    except msgspec.DecodeError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail[:300]
    return " ".join(text.split())[:200]
