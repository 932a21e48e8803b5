"""Throwaway chats waiting to be deleted upstream, shared by every replica.

Owns ``ChatLedger``. Each completion leaves a chat in the upstream account (the history the
page would show); in ``ZAI_CHATS=throwaway`` mode the gateway deletes it afterwards. A chat is
written down before its completion starts (``<p>chats``, a zset whose member says the chat
and who owns it upstream, ``<chat id>\t<guest token>\t<token id>``, scored by the ms time
anyone may delete it), its deadline pushed while its answer streams (``renew``), and struck
out once the upstream says it is gone: one command each way. A delete that failed, or a chat
whose replica died mid-answer, simply reaches its deadline: any replica's sweep then
``claim``s it (one Lua call moves the deadline on, so two sweeps never take the same chat)
and tries again; failures are counted in ``<p>chat:<id>`` (kept a day), which only a failed
chat has. A member that is a bare chat id is the older layout (its owner in that hash), read
the same way. Writing down and striking out go through the shared write-behind batch
(``state.batch``): many requests' ledger writes cost one round trip.
"""

import asyncio
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from state.batch import WriteBehind
from state.keys import Keys

__all__ = ["ChatLedger", "PendingChat", "ledger_member"]

_TRIES_KEPT = 86_400  # seconds a failed chat's count of failures outlives its last one


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def ledger_member(chat_id: str, guest: str, token_id: str) -> str:
    """A chat's member of the ledger's zset: the chat and who owns it, in one string (chat
    ids, tokens and token ids hold no tab)."""
    return f"{chat_id}\t{guest}\t{token_id}"


class PendingChat:
    """A chat to delete: its id, and the token it belongs to (a guest's own token, or the id
    of a pooled token, looked up when needed: the pool's hash is where full tokens live)."""

    __slots__ = ("chat_id", "guest", "member", "token_id", "tries")

    def __init__(
        self, chat_id: str, guest: str, token_id: str, tries: int = 0, member: str = ""
    ) -> None:
        self.chat_id, self.guest, self.token_id, self.tries = chat_id, guest, token_id, tries
        self.member = member or ledger_member(chat_id, guest, token_id)

    def __repr__(self) -> str:
        owner = f"token {self.token_id}" if self.token_id else "a guest"
        return f"<PendingChat {self.chat_id} of {owner} tries={self.tries}>"


class ChatLedger:
    # KEYS[1] chats zset (member -> ms time it may be deleted)
    # ARGV[1] now (ms); ARGV[2] how many to take; ARGV[3] the claim's length (ms)
    # ARGV[4] the chat hash key prefix ("<p>chat:")
    # Returns {member, id, guest, token_id, tries, ...} for each chat taken: its deadline is
    # moved to now + claim, so no other sweep takes it meanwhile (and it returns if this one
    # dies). A member with no tab is a bare chat id, its owner in the hash (older layout).
    CLAIM = """
    local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
    local out = {}
    for _, member in ipairs(due) do
        redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], member)
        local id, guest, tid = string.match(member, '^([^\t]*)\t([^\t]*)\t(.*)$')
        local info = redis.call('HMGET', ARGV[4] .. (id or member), 'guest', 'token_id', 'tries')
        table.insert(out, member)
        table.insert(out, id or member)
        table.insert(out, guest or info[1] or '')
        table.insert(out, tid or info[2] or '')
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

    def open(self, chat: PendingChat, hold: float) -> "asyncio.Future[Any]":
        """Write a chat down before its completion starts; nobody deletes it for ``hold`` s.
        Queued at once (no task to wait for a turn of the loop first), so it leaves in the
        next batch: a replica killed between the upstream making the chat and Redis having
        it leaves that chat behind for good. The future settles once Redis has answered."""
        until, chats = _ms(time.time() + hold), self.keys.chats

        def build(pipe: Pipeline) -> None:
            pipe.zadd(chats, {chat.member: until})

        return self.batch.add(build)

    async def renew(self, members: list[str], hold: float) -> None:
        """Push the deadline of chats whose answers are still streaming here."""
        if members:
            until = _ms(time.time() + hold)
            await self.redis.zadd(self.keys.chats, dict.fromkeys(members, until), xx=True)

    async def later(self, chat: PendingChat, wait: float) -> None:
        """A delete failed: any replica may try again in ``wait`` seconds."""
        tries = self.keys.chat(chat.chat_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.chats, {chat.member: _ms(time.time() + wait)}, xx=True)
            pipe.hincrby(tries, "tries", 1)
            pipe.expire(tries, _TRIES_KEPT)
            await pipe.execute()

    async def done(self, chat: PendingChat) -> None:
        """The upstream no longer has it (deleted, or not found)."""
        keys, failed = self.keys, chat.tries > 0 or chat.member == chat.chat_id

        def build(pipe: Pipeline) -> None:
            pipe.zrem(keys.chats, chat.member)
            if failed:  # only a chat that failed (or of the older layout) has the hash
                pipe.delete(keys.chat(chat.chat_id))

        await self.batch.add(build)

    async def claim(self, limit: int, hold: float) -> list[PendingChat]:
        reply = await self._claim(
            keys=[self.keys.chats],
            args=[_ms(time.time()), limit, _ms(hold), self.keys.chat("")],
        )
        return [
            PendingChat(reply[i + 1], reply[i + 2], reply[i + 3], int(reply[i + 4] or 0), reply[i])
            for i in range(0, len(reply), 5)
        ]

    async def pending(self) -> int:
        """How many chats wait to be deleted (in flight, due, or retried later)."""
        return await self.redis.zcard(self.keys.chats)
