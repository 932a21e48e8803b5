"""Made-up upstream accounts, the admin key and its API, and a gateway serving from a pool.

Owns ``jwt`` (a user token shaped like chat.z.ai's: an ES256 JWT header, a payload with the
account's id and email), ``TOKENS`` (three of them), ``ADMIN`` (the admin token the pool tests
run with), ``admin`` (one admin API call: status code and decoded body), ``tokens_used`` (which
token each completion the fake saw was made with) and ``pool_gateway`` (the ``gateway``
fixture's gateway with ``TOKENS`` pooled, no guests, and ``ADMIN`` set). Every test of the
pool, the admin API and the key API shares these, so a test reads only what it changes.
"""

import base64
import collections
import json

import msgspec
from tornado.httpclient import AsyncHTTPClient

__all__ = [
    "ADMIN",
    "HELLO",
    "OK",
    "POOLED",
    "TOKENS",
    "admin",
    "jwt",
    "pool_gateway",
    "tokens_used",
]

OK = "stream_glm5_plain_thinking"
POOLED = ("home", "guest_auth_user_role", OK)  # the cassettes of a pooled gateway's answers
HELLO = [{"role": "user", "content": "hello"}]
ADMIN = "admin-secret-0123456789"


def jwt(n: int) -> str:
    payload = (
        base64.urlsafe_b64encode(
            json.dumps({"id": f"user-{n}", "email": f"u{n}@example.com"}).encode()
        )
        .decode()
        .rstrip("=")
    )
    return f"eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.sig-{n:04d}-abcdefgh"


TOKENS = [jwt(i) for i in range(3)]


async def admin(gw, method: str, path: str, body: object = None, token: str | None = ADMIN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await AsyncHTTPClient().fetch(
        gw.url + path,
        method=method,
        headers=headers,
        raise_error=False,
        body=None if body is None else json.dumps(body),
        allow_nonstandard_methods=True,
    )
    return response.code, msgspec.json.decode(response.body) if response.body else None


def tokens_used(gw) -> collections.Counter:
    return collections.Counter(r.query["token"] for r in gw.completions_seen())


async def pool_gateway(gateway, *cassettes: str, tokens: list[str] = TOKENS, **settings):
    """``gateway(*cassettes or POOLED, ...)`` answering from ``tokens`` only, with ``ADMIN``
    as its admin token; ``settings`` add to or override that."""
    values = {"zai_tokens": ",".join(tokens), "anonymous_mode": False, "admin_token": ADMIN}
    return await gateway(*(cassettes or POOLED), **{**values, **settings})
