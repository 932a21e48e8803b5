"""The Redis key layout, in one place: one prefix (``REDIS_PREFIX``), one function per kind.

Owns ``Keys``. Every name carries a Redis Cluster hash tag, always (on a single Redis, on
Sentinel and on a cluster alike): the pool and everything shared live under ``<p>{pool}:``,
so each script and transaction that touches several of them (the pick, the release, a
conversation's turn read by the pick, pacing, the WAF breaker, the captcha pool) stays in one
slot; a client key's names share ``<p>{k:<id>}:`` (its admit and settle scripts), an account's
uploaded files ``<p>{f:<user>}:``. ``<p>`` is ``REDIS_PREFIX`` (``zai:``). An operator reads
the pool with ``redis-cli`` from this table (``zai:{pool}:rotation`` and so on):

| key | type | holds |
|---|---|---|
| ``<p>{pool}:tokens`` | hash | token id -> the upstream token (the only place a full token lives) |
| ``<p>{pool}:token:<id>`` | hash | role, user_id, name, failures, cooldown_until, last_used, uses |
| ``<p>{pool}:rotation`` | zset | ids in rotation, scored by pick sequence (lowest = next) |
| ``<p>{pool}:cooldown`` | zset | ids cooling down, scored by the ms time they return |
| ``<p>{pool}:dead`` | set | ids out of rotation until a health check revives them |
| ``<p>{pool}:seq`` | string | the pick sequence counter |
| ``<p>{pool}:rotated:<id>`` | string | the id a rotated token was replaced by (grace period) |
| ``<p>{pool}:leases:<id>`` | zset | lease id -> deadline (ms), each request in flight on it |
| ``<p>{pool}:revoked:<lease>`` | string | a lease given up on: a late pick of it leases nothing |
| ``<p>{pool}:instances`` | zset | instance id -> heartbeat deadline (ms) |
| ``<p>{pool}:instance:<id>`` | hash | host, pid, version, started, inflight (expires with it) |
| ``<p>{pool}:chats`` | zset | throwaway chats to delete upstream -> ms time anyone may |
| ``<p>{pool}:chat:<id>`` | hash | whose chat it is (a guest's token, or a pooled token's id) |
| ``<p>{pool}:conv:<key>`` | hash | a continued conversation: token_id, chat_id, parent_id, ... |
| ``<p>{pool}:conv:<key>:turn`` | string | the request running its turn (one at a time) |
| ``<p>{pool}:guests`` | list | pre-fetched guest credentials (JSON), each popped once |
| ``<p>{pool}:guests:demand`` | hash | unix second -> guests asked for in it (the refill's rate) |
| ``<p>{pool}:facts`` | hash | shared upstream facts: fe_version, fe_version_at, ... |
| ``<p>{pool}:upstream:config`` | hash | the live upstream config: setting name -> JSON, ``rev`` |
| ``<p>{pool}:lock:<name>`` | string | short locks (guest refill, health check, layout move) |
| ``<p>{pool}:captcha`` | zset | single-use captcha params, scored by the ms time they expire |
| ``<p>{pool}:waf:<route>`` | hash | one egress route's WAF breaker: until (ms), backoff, blocked |
| ``<p>{pool}:slots:<route>`` | zset | booked call slots on that route, ``<start>:<end>`` (ms) |
| ``<p>{pool}:pace:token:<id>`` | string | ms time the next call with that pooled token may leave |
| ``<p>{pool}:keys`` | set | ids of the client keys the admin API issued |
| ``<p>{pool}:response:<id>`` | string | a stored Responses API response and its items, TTL |
| ``<p>{pool}:usage:keys`` | hash | id -> name of every key with usage (issued, static, guests) |
| ``<p>{pool}:traffic:<minute>`` | hash | requests, errors, ttfb_us of completions in one minute |
| ``<p>{k:<id>}:key`` | hash | a client key: name, hash (secret's SHA-256), models, limits |
| ``<p>{k:<id>}:rpm`` | zset | request id -> ms time, the key's requests of the last minute |
| ``<p>{k:<id>}:tokens`` | hash | the key's token buckets: m, m_at (minute), d, d_at (day) |
| ``<p>{k:<id>}:usage:<day>`` | hash | ``<model>:requests``, ``:input``, ``:output``, ``:errors`` |
| ``<p>{f:<user>}:file:<sha>`` | string | the file an image was uploaded as, by that account, TTL |

Scripts get their names in ``KEYS[]``; the pick, the lease revocation and the chat claim
also reach names they find while running (the token a pick chooses, its leases), which they
build from ``Keys.pool`` given as an argument: those share the ``{pool}`` tag, so they hash
to the slot of the script's ``KEYS[]``. A ``REDIS_PREFIX`` that holds a tag of its own
(``{gw}:``) puts every name in that one slot (the first tag of a name counts). ``<day>`` is
the UTC day, ``yyyymmdd``. Token ids are the first 16 hex digits of the token's SHA-256:
stable across replicas, and safe to show; ``mask`` is the only other form of a token that may
be shown or logged. ``state.layout`` moves the names of older releases to these.
"""

import hashlib
from dataclasses import dataclass

__all__ = ["POOL_TAG", "Keys", "mask", "token_id"]

POOL_TAG = "{pool}:"


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def mask(secret: str) -> str:
    """``eyJhbG…x9Qk`` style: enough to tell tokens apart, useless to an attacker."""
    if len(secret) <= 12:
        return "…" * bool(secret)
    return f"{secret[:6]}…{secret[-4:]}"


@dataclass(frozen=True, slots=True)
class Keys:
    """The names of one gateway's keys under ``prefix`` (``REDIS_PREFIX``).

    >>> Keys("zai:").rotation, Keys("zai:").client_key("k1")
    ('zai:{pool}:rotation', 'zai:{k:k1}:key')
    """

    prefix: str = "zai:"

    @property
    def pool(self) -> str:
        """``<p>{pool}:``, the stem of every pool and shared name (scripts build from it)."""
        return self.prefix + POOL_TAG

    @property
    def tokens(self) -> str:
        return f"{self.pool}tokens"

    def token(self, tid: str) -> str:
        return f"{self.pool}token:{tid}"

    @property
    def rotation(self) -> str:
        return f"{self.pool}rotation"

    @property
    def cooldown(self) -> str:
        return f"{self.pool}cooldown"

    @property
    def dead(self) -> str:
        return f"{self.pool}dead"

    @property
    def seq(self) -> str:
        return f"{self.pool}seq"

    def rotated(self, tid: str) -> str:
        return f"{self.pool}rotated:{tid}"

    def revoked(self, lease_id: str) -> str:
        return f"{self.pool}revoked:{lease_id}"

    def leases(self, tid: str) -> str:
        return f"{self.pool}leases:{tid}"

    @property
    def instances(self) -> str:
        return f"{self.pool}instances"

    def instance(self, iid: str) -> str:
        return f"{self.pool}instance:{iid}"

    @property
    def chats(self) -> str:
        return f"{self.pool}chats"

    def chat(self, chat_id: str) -> str:
        return f"{self.pool}chat:{chat_id}"

    def conversation(self, key: str) -> str:
        return f"{self.pool}conv:{key}"

    def conversation_turn(self, key: str) -> str:
        return f"{self.pool}conv:{key}:turn"

    @property
    def guests(self) -> str:
        return f"{self.pool}guests"

    @property
    def guest_demand(self) -> str:
        return f"{self.pool}guests:demand"

    @property
    def facts(self) -> str:
        return f"{self.pool}facts"

    @property
    def layout(self) -> str:
        return f"{self.pool}layout"

    @property
    def upstream_config(self) -> str:
        return f"{self.pool}upstream:config"

    @property
    def captcha(self) -> str:
        return f"{self.pool}captcha"

    def waf(self, route: str) -> str:
        return f"{self.pool}waf:{route}"

    def pace(self, route: str) -> str:
        return f"{self.pool}slots:{route}"

    def pace_token(self, tid: str) -> str:
        return f"{self.pool}pace:token:{tid}"

    def lock(self, name: str) -> str:
        return f"{self.pool}lock:{name}"

    @property
    def client_keys(self) -> str:
        return f"{self.pool}keys"

    def response(self, response_id: str) -> str:
        return f"{self.pool}response:{response_id}"

    def file(self, user_id: str, digest: str) -> str:
        return f"{self.prefix}{{f:{user_id}}}:file:{digest}"

    def client_key(self, kid: str) -> str:
        return f"{self.prefix}{{k:{kid}}}:key"

    def client_requests(self, kid: str) -> str:
        return f"{self.prefix}{{k:{kid}}}:rpm"

    def client_tokens(self, kid: str) -> str:
        return f"{self.prefix}{{k:{kid}}}:tokens"

    def usage(self, kid: str, day: str) -> str:
        return f"{self.prefix}{{k:{kid}}}:usage:{day}"

    @property
    def usage_keys(self) -> str:
        return f"{self.pool}usage:keys"

    def traffic(self, minute: str) -> str:
        return f"{self.pool}traffic:{minute}"
