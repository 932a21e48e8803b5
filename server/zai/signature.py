"""The ``X-Signature`` the upstream demands on every completion request.

Owns one pure function. The algorithm (observed since Oct 2025; the key changed twice, so it is
a setting, ``ZAI_SIGNATURE_KEY``): a sub-key is derived from the 5-minute window of the
request's millisecond timestamp, then signs ``requestId,<id>,timestamp,<ts>,user_id,<uid>``
(keys sorted), the base64 of the latest user text, and the timestamp, joined by ``|``.
Two published test vectors pin it (``tests/test_signature.py``).
"""

import base64
import functools
import hmac

__all__ = ["DEFAULT_KEY", "sign"]

DEFAULT_KEY = "key-@@@@)))()((9))-xxxx&&&%%%%%"

_WINDOW_MS = 300_000


def sign(key: str, request_id: str, timestamp_ms: int, user_id: str, prompt: str) -> str:
    """Return the 64-hex-character signature for one completion request."""
    payload = f"requestId,{request_id},timestamp,{timestamp_ms},user_id,{user_id}"
    prompt_b64 = base64.b64encode(prompt.encode()).decode()
    data = f"{payload}|{prompt_b64}|{timestamp_ms}"
    subkey = _subkey(key, timestamp_ms // _WINDOW_MS)
    return hmac.digest(subkey, data.encode(), "sha256").hex()


@functools.lru_cache(maxsize=8)
def _subkey(key: str, window: int) -> bytes:
    # The same for every request of a 5-minute window: derived once, not per request.
    return hmac.digest(key.encode(), str(window).encode(), "sha256").hex().encode()
