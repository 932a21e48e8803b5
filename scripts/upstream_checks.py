"""The checks the real upstream makes of a completion request, for both fake upstreams.

Owns ``refusal``: given what arrived (query, the three headers that matter, the body), the
``(status, body)`` the real upstream would answer instead of a stream, or ``None`` when the
request passes: required query fields, a bearer token equal to the query's ``token``, the
front-end version of the home page, and the ``X-Signature`` (PROTOCOL.md section 3). The test
suite's fake (``tests/fake_upstream.py``) and the benchmark's (``scripts/bench/fake.py``) both
call it, so the benchmark's "direct" limit pays for the same checks the tests hold the gateway
to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from server.zai.signature import DEFAULT_KEY, sign

__all__ = ["BAD_SIGNATURE", "BAD_TOKEN", "REQUIRED", "refusal"]

REQUIRED = (
    "timestamp",
    "requestId",
    "user_id",
    "token",
    "signature_timestamp",
    "version",
    "platform",
)
BAD_SIGNATURE = {"detail": "403: Signature validation failed: 签名验证失败"}
BAD_TOKEN = {"detail": "Your session has expired or the token is invalid. Please sign in again."}


def refusal(
    query: Mapping[str, str],
    authorization: str | None,
    fe_sent: str | None,
    signature: str | None,
    body: bytes,
    fe_version: str | None,
    key: str = DEFAULT_KEY,
) -> tuple[int, dict] | None:
    """What the upstream answers a completion request that fails a check, else ``None``."""
    missing = [name for name in REQUIRED if not query.get(name)]
    if missing:
        return 400, {"detail": f"Missing required query parameters: {', '.join(missing)}"}
    if authorization != f"Bearer {query['token']}":
        return 401, BAD_TOKEN
    if fe_version and fe_sent != fe_version:
        return 426, {
            "detail": f"Your client version ({fe_sent or 'unknown'}) is outdated."
            f" Minimum required: {fe_version.removeprefix('prod-fe-')}."
            " Please refresh the page"
        }
    try:
        prompt = json.loads(body)["signature_prompt"]
        expected = sign(key, query["requestId"], int(query["timestamp"]), query["user_id"], prompt)
    except (ValueError, KeyError, TypeError):
        return 400, BAD_SIGNATURE
    if signature != expected:
        return 400, BAD_SIGNATURE
    return None
