"""Client keys issued by the admin API, and their limits, in Redis.

Owns ``ClientKeys``, ``new_secret`` and ``parse_secret``. A key's secret is
``sk-zai-<id>-<48 hex>``: the id inside it names the record, so finding the key costs no
index, and only the secret's SHA-256 is stored (``<p>{k:<id>}:key``). ``admit`` is the one
call a request makes (``check`` the same call, to be sent with the token pick in one round
trip, ``KeyCheck``): one Lua script on the Redis clock checks the secret's hash, disabled,
expiry and the model allow-list, then the limits, and reserves what the request may use:

- requests per minute (``rpm``): a sliding log of the last 60 s (a zset of request ids), so
  50 a minute is exactly 50 in any 60 s, across every replica;
- tokens per minute / per day (``tpm``, ``tpd``): two buckets that refill continuously (a
  minute's, a day's worth); the request's estimate is taken before the call and ``settle``
  gives back (or takes more of) the difference once the real usage is known.

Every limit is checked before any is taken, so a request refused for tokens does not use up
a request slot. All keys of one client key share the hash tag ``{k:<id>}`` and are passed in
``KEYS[]``, so the scripts already run on Redis Cluster. Secrets are compared as hashes: a
timing difference in comparing SHA-256 digests tells an attacker nothing about the secret.
"""

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from state.batch import Call
from state.connection import Fields
from state.keys import Keys

__all__ = [
    "Admission",
    "ClientKey",
    "ClientKeys",
    "KeyCheck",
    "Limit",
    "admission",
    "new_secret",
    "parse_secret",
]

_PREFIX = "sk-zai-"
_ID_HEX = 12
_SECRET_HEX = 48

# KEYS: the key record, the request log, the token buckets.
# ARGV: secret hash, model id (lower case, "" = none), requests (0|1), token estimate, member.
_ADMIT = """
local k = redis.call('HMGET', KEYS[1], 'hash', 'disabled', 'expires_at', 'models', 'rpm',
  'tpm', 'tpd', 'name')
if not k[1] or k[1] ~= ARGV[1] then return {'unknown'} end
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
if k[2] == '1' then return {'disabled', k[8]} end
local expires = tonumber(k[3] or '0')
if expires > 0 and expires <= ms then return {'expired', k[8]} end
if ARGV[2] ~= '' and (k[4] or '') ~= '' and not string.find(k[4], '|' .. ARGV[2] .. '|', 1, true)
then return {'model', k[8]} end
local rpm, tpm, tpd = tonumber(k[5] or '0'), tonumber(k[6] or '0'), tonumber(k[7] or '0')
local cost, need = tonumber(ARGV[3]), tonumber(ARGV[4])
local used, req_reset = 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms - 60000)
  used = redis.call('ZCARD', KEYS[2])
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if oldest[2] then req_reset = tonumber(oldest[2]) + 60000 - ms end
end
local function level(cap, field, span)
  if cap <= 0 then return 0 end
  local got = redis.call('HMGET', KEYS[3], field, field .. '_at')
  local at = tonumber(got[2] or ms)
  return math.min(cap, tonumber(got[1] or cap) + (ms - at) * cap / span)
end
local lm, ld = level(tpm, 'm', 60000), level(tpd, 'd', 86400000)
local needm, needd = math.min(need, tpm), math.min(need, tpd)
local refused, retry = 'ok', 0
if rpm > 0 and used + cost > rpm then
  refused, retry = 'rpm', req_reset
elseif tpm > 0 and needm > 0 and lm < needm then
  refused, retry = 'tpm', math.ceil((needm - lm) * 60000 / tpm)
elseif tpd > 0 and needd > 0 and ld < needd then
  refused, retry = 'tpd', math.ceil((needd - ld) * 86400000 / tpd)
end
if refused == 'ok' then
  if rpm > 0 and cost > 0 then
    redis.call('ZADD', KEYS[2], ms, ARGV[5])
    redis.call('PEXPIRE', KEYS[2], 60000)
    used = used + cost
    if req_reset == 0 then req_reset = 60000 end
  end
  if tpm > 0 then
    lm = lm - needm
    redis.call('HSET', KEYS[3], 'm', tostring(lm), 'm_at', ms)
  end
  if tpd > 0 then
    ld = ld - needd
    redis.call('HSET', KEYS[3], 'd', tostring(ld), 'd_at', ms)
  end
  if tpm > 0 or tpd > 0 then redis.call('PEXPIRE', KEYS[3], 86400000) end
else
  needm, needd = 0, 0
end
local function reset(cap, l, span)
  if cap <= 0 or l >= cap then return 0 end
  return math.ceil((cap - l) * span / cap)
end
return {refused, k[8], retry, rpm, math.max(rpm - used, 0), req_reset,
  tpm, math.max(math.floor(lm), 0), reset(tpm, lm, 60000),
  tpd, math.max(math.floor(ld), 0), reset(tpd, ld, 86400000), needm, needd}
"""

# KEYS: the key record, the token buckets. ARGV: tokens to give back (negative: to take)
# from the minute's bucket and from the day's.
_SETTLE = """
local k = redis.call('HMGET', KEYS[1], 'tpm', 'tpd')
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
local function settle(cap, field, span, delta)
  if cap <= 0 or delta == 0 then return end
  local got = redis.call('HMGET', KEYS[2], field, field .. '_at')
  if not got[1] then return end
  local l = math.min(cap, tonumber(got[1]) + (ms - tonumber(got[2])) * cap / span)
  redis.call('HSET', KEYS[2], field, tostring(math.min(cap, l + delta)), field .. '_at', ms)
end
settle(tonumber(k[1] or '0'), 'm', 60000, tonumber(ARGV[1]))
settle(tonumber(k[2] or '0'), 'd', 86400000, tonumber(ARGV[2]))
return 1
"""

_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def new_secret(kid: str) -> str:
    return f"{_PREFIX}{kid}-{secrets.token_hex(_SECRET_HEX // 2)}"


def parse_secret(presented: str) -> tuple[str, str] | None:
    """``(id, sha256 hex)`` of a key in the issued format, else ``None``.

    >>> parse_secret("sk-zai-0123456789ab-" + "f" * 48)[0]
    '0123456789ab'
    >>> parse_secret("sk-other") is None
    True
    """
    if not presented.startswith(_PREFIX) or len(presented) != len(_PREFIX) + 13 + _SECRET_HEX:
        return None
    kid, sep, _ = presented[len(_PREFIX) :].partition("-")
    if len(kid) != _ID_HEX or not sep:
        return None
    return kid, hashlib.sha256(presented.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ClientKey:
    id: str
    name: str
    models: list[str]  # empty: any model
    rpm: int  # 0: no limit
    tpm: int
    tpd: int
    expires_at: float | None  # unix seconds
    disabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit as a client sees it: ``kind`` is the suffix of OpenAI's header names."""

    kind: str  # requests | tokens | tokens-day
    limit: int
    remaining: int
    reset: float  # seconds until it is whole again (requests: until one more slot frees)


@dataclass(frozen=True, slots=True)
class Admission:
    refused: str  # "" | unknown | disabled | expired | model | rpm | tpm | tpd
    name: str = ""
    retry_after: float = 0.0
    limits: tuple[Limit, ...] = ()
    reserved_minute: int = 0  # tokens taken from the minute's bucket, for settle
    reserved_day: int = 0


@dataclass(slots=True)
class KeyCheck:
    """A key's check, to run (``call``) where it costs no round trip of its own: with the
    token pick. Whoever runs it puts the answer in ``admission``."""

    call: Call
    admission: "Admission | None" = None

    def answered(self, reply: Any) -> "Admission":
        """Take the script's reply (an exception: it failed, raised here)."""
        if isinstance(reply, Exception):
            raise reply
        self.admission = admission(reply)
        return self.admission


def admission(reply: Any) -> "Admission":
    """What the check script answered, read."""
    refused = str(reply[0])
    if refused in ("unknown", "disabled", "expired", "model"):
        return Admission(refused, str(reply[1]) if len(reply) > 1 else "")
    rpm, rpm_left, rpm_reset, tpm, tpm_left, tpm_reset, tpd, tpd_left, tpd_reset = (
        int(v) for v in reply[3:12]
    )
    limits = [
        Limit("requests", rpm, rpm_left, rpm_reset / 1000),
        Limit("tokens", tpm, tpm_left, tpm_reset / 1000),
        Limit("tokens-day", tpd, tpd_left, tpd_reset / 1000),
    ]
    return Admission(
        refused="" if refused == "ok" else refused,
        name=str(reply[1]),
        retry_after=int(reply[2]) / 1000,
        limits=tuple(limit for limit in limits if limit.limit),
        reserved_minute=int(reply[12]),
        reserved_day=int(reply[13]),
    )


def _record(kid: str, raw: dict[str, str]) -> ClientKey:
    expires = int(raw.get("expires_at") or 0)
    return ClientKey(
        id=kid,
        name=raw.get("name", ""),
        models=[m for m in raw.get("models", "").split("|") if m],
        rpm=int(raw.get("rpm") or 0),
        tpm=int(raw.get("tpm") or 0),
        tpd=int(raw.get("tpd") or 0),
        expires_at=expires / 1000 if expires else None,
        disabled=raw.get("disabled") == "1",
        created_at=int(raw.get("created_at") or 0) / 1000,
    )


def _fields(values: dict[str, Any]) -> dict[str, str]:
    """What the API changes, as the record stores it."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if name == "models":
            out[name] = "|" + "|".join(m.lower() for m in value) + "|" if value else ""
        elif name == "expires_at":
            out[name] = str(int(value * 1000)) if value else "0"
        elif name == "disabled":
            out[name] = "1" if value else "0"
        elif name in ("rpm", "tpm", "tpd"):
            out[name] = str(int(value or 0))
        else:
            out[name] = str(value)
    return out


class ClientKeys:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._admit = redis.register_script(_ADMIT)

    def __repr__(self) -> str:
        return f"<ClientKeys {self.keys.client_keys}>"

    async def create(self, **values: object) -> tuple[ClientKey, str]:
        """A new key with ``values`` (name, models, rpm, tpm, tpd, expires_at, disabled);
        returns it with its secret, which exists nowhere else from now on."""
        kid = secrets.token_hex(_ID_HEX // 2)
        secret = new_secret(kid)
        record = _fields(values)
        record.update(
            hash=hashlib.sha256(secret.encode()).hexdigest(),
            created_at=str(int(time.time() * 1000)),
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.client_key(kid), mapping=cast(Fields, record))
            pipe.sadd(self.keys.client_keys, kid)
            await pipe.execute()
        return _record(kid, record), secret

    async def get(self, kid: str) -> ClientKey | None:
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys.client_key(kid)))
        return _record(kid, raw) if raw.get("hash") else None

    async def list(self) -> list[ClientKey]:
        ids = sorted(cast(set[str], await self.redis.smembers(self.keys.client_keys)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for kid in ids:
                pipe.hgetall(self.keys.client_key(kid))
            rows = await pipe.execute()
        found = [_record(kid, raw) for kid, raw in zip(ids, rows, strict=True) if raw]
        return sorted(found, key=lambda key: key.created_at)

    async def update(self, kid: str, **values: object) -> ClientKey | None:
        fields = _fields(values)
        if fields:
            flat = [part for pair in fields.items() for part in pair]
            if not await self.redis.eval(_UPDATE, 1, self.keys.client_key(kid), *flat):
                return None
        return await self.get(kid)

    async def delete(self, kid: str) -> bool:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(k.client_key(kid), k.client_requests(kid), k.client_tokens(kid))
            pipe.srem(k.client_keys, kid)
            gone, _ = await pipe.execute()
        return bool(gone)

    def check(
        self, kid: str, digest: str, model: str, requests: int, tokens: int, member: str
    ) -> "KeyCheck":
        """The check of the key and its limits that reserves ``requests`` and ``tokens``, as
        a script call to run (alone by ``admit``, or with the token pick in one round trip)."""
        k = self.keys
        names = [k.client_key(kid), k.client_requests(kid), k.client_tokens(kid)]
        args = [digest, model.lower(), requests, max(0, tokens), member]
        return KeyCheck((self._admit, names, args))

    async def admit(
        self, kid: str, digest: str, model: str, requests: int, tokens: int, member: str
    ) -> Admission:
        """Check the key and its limits and reserve ``requests`` and ``tokens``: one call."""
        script, names, args = self.check(kid, digest, model, requests, tokens, member).call
        return admission(await script(keys=names, args=args))

    async def settle(self, kid: str, admission: Admission, used: int) -> None:
        """Give back what the request reserved beyond what it used (or take the excess)."""
        if not (admission.reserved_minute or admission.reserved_day or used):
            return
        await self.redis.eval(
            _SETTLE,
            2,
            self.keys.client_key(kid),
            self.keys.client_tokens(kid),
            admission.reserved_minute - used,
            admission.reserved_day - used,
        )
