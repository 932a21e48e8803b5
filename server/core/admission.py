"""An issued key's admission, as the client hears it when its limits refuse the call.

Owns ``refusal``: the error for a refused ``Admission`` (an unknown, disabled or expired key,
a model outside its list, a limit spent), whichever layer ran the check (the handler alone,
or the token source with its pick in one round trip).
"""

from server.core.errors import GatewayError
from state.client_keys import Admission

__all__ = ["refusal"]

_LIMITED = {"rpm": "requests per minute", "tpm": "tokens per minute", "tpd": "tokens per day"}
_LIMIT_OF = {"rpm": "requests", "tpm": "tokens", "tpd": "tokens-day"}


def refusal(admission: Admission, model: str) -> GatewayError | None:
    """The error for a refused admission, or ``None`` when it was let through."""
    refused = admission.refused
    if not refused:
        return None
    if refused == "unknown":
        return GatewayError("invalid_api_key", "the API key is not valid for this gateway")
    if refused in ("disabled", "expired"):
        return GatewayError("invalid_api_key", f"the API key is {refused}")
    if refused == "model":
        return GatewayError("model_not_allowed", "not in its model list", model=model)
    limit = next(lim.limit for lim in admission.limits if lim.kind == _LIMIT_OF[refused])
    return GatewayError(
        "key_rate_limited", f"{limit} {_LIMITED[refused]}", retry_after=admission.retry_after
    )
