"""Client conversations continued in one upstream chat (``ZAI_CHATS=continue``), in Redis.

Owns ``Thread`` (one request's claim on a conversation), ``Mapping`` (what the upstream
already holds of it) and ``ConversationStore``. A conversation key is a hash (never the
caller's raw id); ``<p>conv:<key>`` is a hash with the pooled token the chat belongs to
(``token_id``), the chat (``chat_id``), the assistant message the next turn hangs under
(``parent_id``), how many rendered turns the client had sent (``count``) with a digest of them
(``prefix``) and of the answer's text (``answer``), expiring ``ZAI_CONVERSATION_TTL`` after
its last turn. ``<p>conv:<key>:turn`` holds the request id running a turn on it (one turn per
chat at a time), with the lease time to live. Both are read and taken by the token pool's
pick script (``TokenPool.acquire(thread=...)``): one round trip on the request path. Saving a
turn and letting go of the claim ride the shared write-behind batch, off the request's path;
the same write puts the chat in the throwaway chats' ledger (``state.chats``) with a deadline
``grace`` seconds past the mapping's expiry, pushed by every turn, so a conversation nobody
continues has its chat deleted upstream by any replica's sweep.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from state.batch import WriteBehind, evalsha
from state.chats import ledger_member
from state.keys import Keys

__all__ = ["ConversationStore", "Mapping", "Thread"]


@dataclass(slots=True)
class Thread:
    """One request's claim on a conversation: its hashed key and the id holding its turn;
    ``released`` once it let go (with its turn saved, or at the request's end)."""

    key: str
    holder: str
    released: bool = False


@dataclass(frozen=True, slots=True)
class Mapping:
    """What the upstream holds of a conversation (see the module docstring)."""

    chat_id: str
    parent_id: str
    count: int
    prefix: str
    answer: str


class ConversationStore:
    # KEYS[1] the turn key; ARGV[1] the holder. Deletes it only if that holder still has it
    # (a claim that lapsed and was taken by the next turn is not ours to drop).
    LET_GO = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def __init__(
        self, redis: Redis, keys: Keys, ttl: float, batch: WriteBehind, grace: float = 60.0
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.grace = grace  # past its mapping's expiry, a chat waits this long to be deleted
        self.batch = batch
        self._let_go = redis.register_script(self.LET_GO)
        batch.uses(self._let_go)

    def __repr__(self) -> str:
        return f"<ConversationStore ttl={self.ttl:g}>"

    def save(self, thread: Thread, token_id: str, mapping: Mapping) -> None:
        """The turn went well: the next one continues from it, and may run from now on (the
        mapping and the claim let go in one write, behind). Called before the client has the
        answer's end, so a client that asks the next turn at once does not find it held."""
        keys = self.keys
        key, ttl = keys.conversation(thread.key), int(self.ttl * 1000)
        turn, holder = keys.conversation_turn(thread.key), thread.holder
        # The chat is written down to be deleted upstream once the conversation has expired
        # (each turn pushes that on): an account does not fill up with forgotten chats.
        until = int((time.time() + self.ttl + self.grace) * 1000)
        thread.released = True

        def build(pipe: Pipeline) -> None:
            pipe.delete(key)  # a fresh chat replaces every field of the old one
            pipe.hset(
                key,
                mapping={
                    "token_id": token_id,
                    "chat_id": mapping.chat_id,
                    "parent_id": mapping.parent_id,
                    "count": mapping.count,
                    "prefix": mapping.prefix,
                    "answer": mapping.answer,
                },
            )
            pipe.pexpire(key, ttl)
            evalsha(pipe, self._let_go, [turn], [holder])
            pipe.zadd(keys.chats, {ledger_member(mapping.chat_id, "", token_id): until})

        self.batch.add(build).add_done_callback(_ignore)

    def let_go(self, thread: Thread) -> None:
        """The request is over: the next turn of the conversation may run (written behind;
        nothing when ``save`` let go already)."""
        if thread.released:
            return
        thread.released = True
        turn = self.keys.conversation_turn(thread.key)
        self.batch.add(
            lambda pipe: evalsha(pipe, self._let_go, [turn], [thread.holder])
        ).add_done_callback(_ignore)

    async def forget(self, thread: Thread) -> None:
        await self.redis.delete(self.keys.conversation(thread.key))


def _ignore(future: "asyncio.Future[Any]") -> None:
    """A lost write costs a fresh chat (mapping) or a claim that lapses by itself (turn)."""
    if not future.cancelled():
        future.exception()  # retrieved: no "never retrieved" warning
