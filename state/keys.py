"""The Redis key layout, in one place: one prefix (``REDIS_PREFIX``), one function per kind.

Owns ``Keys``. An operator reads the pool with ``redis-cli`` from this table:

| key | type | holds |
|---|---|---|
| ``<p>tokens`` | hash | token id -> the upstream token (the only place a full token lives) |
| ``<p>token:<id>`` | hash | role, user_id, name, failures, cooldown_until, last_used, uses, ... |
| ``<p>rotation`` | zset | ids in rotation, scored by pick sequence (lowest = next) |
| ``<p>cooldown`` | zset | ids cooling down, scored by the ms time they return |
| ``<p>dead`` | set | ids out of rotation until a health check revives them |
| ``<p>seq`` | string | the pick sequence counter |
| ``<p>rotated:<id>`` | string | the id a rotated token was replaced by (for a grace period) |
| ``<p>leases:<id>`` | zset | lease id -> deadline (ms) for each request in flight on that token |
| ``<p>revoked:<lease>`` | string | a lease id given up on: a late ACQUIRE of it leases nothing |
| ``<p>instances`` | zset | instance id -> heartbeat deadline (ms) |
| ``<p>instance:<id>`` | hash | host, pid, version, started, inflight (expires with the heartbeat) |
| ``<p>chats`` | zset | throwaway chats to delete upstream -> ms time anyone may delete it |
| ``<p>chat:<id>`` | hash | whose chat it is (a guest's token, or a pooled token's id), tries |
| ``<p>conv:<key>`` | hash | a continued conversation: token_id, chat_id, parent_id, count, ... |
| ``<p>conv:<key>:turn`` | string | the request running its turn (one at a time) |
| ``<p>guests`` | list | pre-fetched guest credentials (JSON), each popped exactly once |
| ``<p>guests:demand`` | hash | unix second -> guests asked for in it (the refill's rate) |
| ``<p>facts`` | hash | shared upstream facts: fe_version, fe_version_at |
| ``<p>upstream:config`` | hash | the live upstream config: setting name -> JSON value, ``rev`` |
| ``<p>lock:<name>`` | string | short locks (guest refill, health check) |
| ``<p>captcha`` | zset | single-use captcha params, scored by the ms time they expire |
| ``<p>waf:<route>`` | hash | one egress route's WAF breaker: until (ms), backoff (s), blocked |
| ``<p>slots:<route>`` | zset | booked call slots on that route, ``<start>:<end>`` (ms) by start |
| ``<p>pace:token:<id>`` | string | ms time the next call with that pooled token may leave |
| ``<p>keys`` | set | ids of the client keys the admin API issued |
| ``<p>{k:<id>}:key`` | hash | a client key: name, hash (secret's SHA-256), models, limits, ... |
| ``<p>{k:<id>}:rpm`` | zset | request id -> ms time, the key's requests of the last minute |
| ``<p>{k:<id>}:tokens`` | hash | the key's token buckets: m, m_at (per minute), d, d_at (per day) |
| ``<p>{k:<id>}:usage:<day>`` | hash | ``<model>:requests``, ``:input``, ``:output``, ``:errors`` |
| ``<p>response:<id>`` | string | a stored Responses API response and its items (JSON), with a TTL |
| ``<p>{f:<user>}:file:<sha>`` | string | the file an image was uploaded as, by that account, TTL |
| ``<p>usage:keys`` | hash | id -> name of every key with usage (issued, AUTH_TOKEN(S), anonymous) |
| ``<p>traffic:<minute>`` | hash | requests, errors, ttfb_us of all completions in one minute |

Client-key names share the hash tag ``{k:<id>}`` (every key one script touches hashes to
one Redis Cluster slot); ``<day>`` is the UTC day, ``yyyymmdd``. Token ids are the first 16
hex digits of the token's SHA-256: stable across replicas, and safe to show; ``mask`` is the
only other form of a token that may be shown or logged.
"""

import hashlib
from dataclasses import dataclass

__all__ = ["Keys", "cluster_prefix", "mask", "token_id"]


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def cluster_prefix(prefix: str) -> str:
    """The prefix on a Redis Cluster: one hash tag (``zai:`` -> ``{zai}:``), so every key
    hashes to one slot and a script or transaction over several keys stays on one node. A
    prefix that already holds a tag is kept. (Client keys' own ``{k:<id>}`` tags then no
    longer pick a slot: the first tag of a name is the one that counts.)

    >>> cluster_prefix("zai:"), cluster_prefix("{gw}:")
    ('{zai}:', '{gw}:')
    """
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return prefix
    stem = prefix.rstrip(":") or "zai"
    return "{" + stem + "}:"


def mask(secret: str) -> str:
    """``eyJhbG…x9Qk`` style: enough to tell tokens apart, useless to an attacker."""
    if len(secret) <= 12:
        return "…" * bool(secret)
    return f"{secret[:6]}…{secret[-4:]}"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "zai:"

    @property
    def tokens(self) -> str:
        return f"{self.prefix}tokens"

    def token(self, tid: str) -> str:
        return f"{self.prefix}token:{tid}"

    @property
    def rotation(self) -> str:
        return f"{self.prefix}rotation"

    @property
    def cooldown(self) -> str:
        return f"{self.prefix}cooldown"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead"

    @property
    def seq(self) -> str:
        return f"{self.prefix}seq"

    def rotated(self, tid: str) -> str:
        return f"{self.prefix}rotated:{tid}"

    def leases(self, tid: str) -> str:
        return f"{self.prefix}leases:{tid}"

    @property
    def instances(self) -> str:
        return f"{self.prefix}instances"

    def instance(self, iid: str) -> str:
        return f"{self.prefix}instance:{iid}"

    @property
    def chats(self) -> str:
        return f"{self.prefix}chats"

    def chat(self, chat_id: str) -> str:
        return f"{self.prefix}chat:{chat_id}"

    def conversation(self, key: str) -> str:
        return f"{self.prefix}conv:{key}"

    def conversation_turn(self, key: str) -> str:
        return f"{self.prefix}conv:{key}:turn"

    @property
    def guests(self) -> str:
        return f"{self.prefix}guests"

    @property
    def guest_demand(self) -> str:
        return f"{self.prefix}guests:demand"

    @property
    def facts(self) -> str:
        return f"{self.prefix}facts"

    @property
    def upstream_config(self) -> str:
        return f"{self.prefix}upstream:config"

    @property
    def captcha(self) -> str:
        return f"{self.prefix}captcha"

    def waf(self, route: str) -> str:
        return f"{self.prefix}waf:{route}"

    def pace(self, route: str) -> str:
        return f"{self.prefix}slots:{route}"

    def pace_token(self, tid: str) -> str:
        return f"{self.prefix}pace:token:{tid}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    @property
    def client_keys(self) -> str:
        return f"{self.prefix}keys"

    def response(self, response_id: str) -> str:
        return f"{self.prefix}response:{response_id}"

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
        return f"{self.prefix}usage:keys"

    def traffic(self, minute: str) -> str:
        return f"{self.prefix}traffic:{minute}"
