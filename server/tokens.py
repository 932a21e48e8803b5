"""Where upstream credentials come from, behind one small interface.

Owns the ``TokenSource`` protocol and ``GuestTokens``. The core asks ``acquire(model)`` for a
credential before each upstream attempt and reports back with ``release(cred, outcome)``
(``ok``, ``cooldown`` or ``dead``: the ``token`` column of ``server.errors.RULES``).
``GuestTokens`` is anonymous mode: a fresh guest per request, so no two clients ever share a
server-side chat, and nothing to report back. The shared Redis pool of user tokens
(``state/``) implements the same protocol.
"""

from typing import Protocol

from server.errors import GatewayError
from server.models import Model
from server.zai.client import ZaiClient
from server.zai.identity import Credential

__all__ = ["GuestTokens", "NoTokens", "TokenSource"]


class TokenSource(Protocol):
    async def acquire(self, model: Model) -> Credential: ...

    async def release(self, cred: Credential, outcome: str) -> None: ...


class GuestTokens:
    """Anonymous mode: every acquire signs in a new guest."""

    def __init__(self, client: ZaiClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return "<GuestTokens fresh guest per request>"

    async def acquire(self, model: Model) -> Credential:
        return await self.client.guest_credential()

    async def release(self, cred: Credential, outcome: str) -> None:
        return None


class NoTokens:
    """Neither anonymous mode nor a pool: every request is refused with the reason."""

    def __repr__(self) -> str:
        return "<NoTokens>"

    async def acquire(self, model: Model) -> Credential:
        raise GatewayError(
            "no_upstream_token",
            "the gateway has no upstream token to use: ANONYMOUS_MODE is off and no user "
            "tokens are configured (AUTH_TOKENS_FILE)",
        )

    async def release(self, cred: Credential, outcome: str) -> None:
        return None
