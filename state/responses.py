"""Stored responses (the Responses API's ``store``), shared by every replica.

Owns ``ResponseStore``: one string per response, ``<p>response:<id>``, holding the response
object and the conversation items that led to it and came out of it (earlier items, the
request's input, then the output), msgspec-encoded, expiring after ``RESPONSES_TTL``
seconds. ``save`` writes one, ``load`` reads one back (for ``previous_response_id`` and
``GET /v1/responses/{id}``), ``delete`` removes one; one round trip each. Any replica can
continue a conversation another one answered.
"""

from typing import Any

import msgspec
from redis.asyncio import Redis

from state.keys import Keys

__all__ = ["ResponseStore"]


class Stored(msgspec.Struct):
    response: dict[str, Any]
    items: list[dict[str, Any]]


_decode = msgspec.json.Decoder(Stored).decode


class ResponseStore:
    def __init__(self, redis: Redis, keys: Keys, ttl: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"<ResponseStore {self.keys.response('*')} ttl={self.ttl:g}s>"

    async def save(self, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        value = msgspec.json.encode(Stored(response, items))
        key = self.keys.response(response["id"])
        await self.redis.set(key, value, px=max(1, int(self.ttl * 1000)))

    async def load(self, response_id: str) -> Stored | None:
        value = await self.redis.get(self.keys.response(response_id))
        return None if value is None else _decode(value)

    async def delete(self, response_id: str) -> bool:
        return bool(await self.redis.delete(self.keys.response(response_id)))
