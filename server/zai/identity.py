"""Who the gateway is to the upstream: a token and the user id inside it.

Owns ``Credential`` and ``credential_from_auth``. Upstream tokens are ES256 JWTs whose payload
is only ``{"id", "email"}``; ``id`` is the ``user_id`` the request and its signature carry.
``GET /api/v1/auths/`` answers ``{id, name, role, token, ...}``: ``role`` tells a real account
(``user``) from a guest. ``masked`` is the only form of a token that may be logged or shown.
"""

import base64
from dataclasses import dataclass
from typing import Any

import msgspec

from state.conversations import Mapping
from state.keys import mask

__all__ = ["AuthAnswer", "Credential", "credential_from_auth", "mask", "user_id_of"]


@dataclass(frozen=True, slots=True)
class Credential:
    token: str
    user_id: str
    role: str = "guest"
    name: str = "Guest"
    lease: Any = None  # the issuing token source's handle (a pool lease), opaque here
    # ZAI_CHATS=continue: the conversation's chat this token holds (the pool answered it)
    mapping: Mapping | None = None

    def __repr__(self) -> str:
        return f"<Credential {self.role} {mask(self.token)}>"

    @property
    def masked(self) -> str:
        return mask(self.token)


class AuthAnswer(msgspec.Struct):
    token: str
    id: str = ""
    role: str = ""
    name: str = ""
    email: str = ""


def user_id_of(token: str) -> str:
    """The ``id`` claim of a JWT, or "" when the token is not a readable JWT."""
    try:
        payload = token.split(".")[1]
        claims = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, msgspec.DecodeError):
        return ""
    value = claims.get("id") if isinstance(claims, dict) else None
    return value if isinstance(value, str) else ""


def credential_from_auth(body: bytes) -> Credential:
    """Decode an ``/api/v1/auths/`` answer; raises ``msgspec.DecodeError`` if it is not one."""
    answer = msgspec.json.decode(body, type=AuthAnswer)
    user_id = answer.id or user_id_of(answer.token)
    return Credential(answer.token, user_id, answer.role or "guest", answer.name or "Guest")
