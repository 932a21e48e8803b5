"""Throwaway chats waiting to be deleted upstream, shared by every replica.

Owns ``ChatLedger``. Each completion leaves a chat in the upstream account (the history the
page would show); in ``ZAI_CHATS=throwaway`` mode the gateway deletes it afterwards. A chat is
written down before its completion starts (``<p>chats``, a zset of chat id -> the ms time
anyone may delete it, and ``<p>chat:<id>``, who owns it upstream), its deadline pushed while
its answer streams (``renew``), and struck out once the upstream says it is gone. A delete
that failed, or a chat whose replica died mid-answer, simply reaches its deadline: any
replica's sweep then ``claim``s it (one Lua call moves the deadline on, so two sweeps never
take the same chat) and tries again. Writing down and striking out go through the shared
write-behind batch (``state.batch``): many requests' ledger writes cost one round trip.
"""

import time

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from state.batch import WriteBehind
from state.keys import Keys

__all__ = ["ChatLedger", "PendingChat"]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class PendingChat:
    """A chat to delete: its id, and the token it belongs to (a guest's own token, or the id
    of a pooled token, looked up when needed: the pool's hash is where full tokens live)."""

    __slots__ = ("chat_id", "guest", "token_id", "tries")

    def __init__(self, chat_id: str, guest: str, token_id: str, tries: int) -> None:
        self.chat_id, self.guest, self.token_id, self.tries = chat_id, guest, token_id, tries

    def __repr__(self) -> str:
        owner = f"token {self.token_id}" if self.token_id else "a guest"
        return f"<PendingChat {self.chat_id} of {owner} tries={self.tries}>"


class ChatLedger:
    # KEYS[1] chats zset (chat id -> ms time it may be deleted)
    # ARGV[1] now (ms); ARGV[2] how many to take; ARGV[3] the claim's length (ms)
    # ARGV[4] the chat hash key prefix ("<p>chat:")
    # Returns {id, guest, token_id, tries, ...} for each chat taken: its deadline is moved to
    # now + claim, so no other sweep takes it meanwhile (and it returns if this one dies).
    CLAIM = """
    local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
    local out = {}
    for _, id in ipairs(due) do
        redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], id)
        local info = redis.call('HMGET', ARGV[4] .. id, 'guest', 'token_id', 'tries')
        table.insert(out, id)
        table.insert(out, info[1] or '')
        table.insert(out, info[2] or '')
        table.insert(out, info[3] or '0')
    end
    return out
    """

    def __init__(self, redis: Redis, keys: Keys, batch: WriteBehind | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.batch = batch or WriteBehind(redis)
        self._claim = redis.register_script(self.CLAIM)

    def __repr__(self) -> str:
        return f"<ChatLedger {self.keys.chats}>"

    async def open(self, chat_id: str, guest: str, token_id: str, hold: float) -> None:
        """Write a chat down before its completion starts; nobody deletes it for ``hold`` s.
        The hash goes first: a sweep that sees the chat in the zset finds who owns it."""
        keys, until = self.keys, _ms(time.time() + hold)

        def build(pipe: Pipeline) -> None:
            pipe.hset(keys.chat(chat_id), mapping={"guest": guest, "token_id": token_id})
            pipe.zadd(keys.chats, {chat_id: until})

        await self.batch.add(build)

    async def renew(self, chat_ids: list[str], hold: float) -> None:
        """Push the deadline of chats whose answers are still streaming here."""
        if chat_ids:
            until = _ms(time.time() + hold)
            await self.redis.zadd(self.keys.chats, dict.fromkeys(chat_ids, until), xx=True)

    async def later(self, chat_id: str, wait: float) -> None:
        """A delete failed: any replica may try again in ``wait`` seconds."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.chats, {chat_id: _ms(time.time() + wait)}, xx=True)
            pipe.hincrby(self.keys.chat(chat_id), "tries", 1)
            await pipe.execute()

    async def done(self, chat_id: str) -> None:
        """The upstream no longer has it (deleted, or not found)."""
        keys = self.keys

        def build(pipe: Pipeline) -> None:
            pipe.zrem(keys.chats, chat_id)
            pipe.delete(keys.chat(chat_id))

        await self.batch.add(build)

    async def claim(self, limit: int, hold: float) -> list[PendingChat]:
        reply = await self._claim(
            keys=[self.keys.chats],
            args=[_ms(time.time()), limit, _ms(hold), self.keys.chat("")],
        )
        return [
            PendingChat(reply[i], reply[i + 1], reply[i + 2], int(reply[i + 3] or 0))
            for i in range(0, len(reply), 4)
        ]

    async def pending(self) -> int:
        """How many chats wait to be deleted (in flight, due, or retried later)."""
        return await self.redis.zcard(self.keys.chats)
