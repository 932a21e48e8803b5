"""Throwaway chats (``ZAI_CHATS=throwaway``): each request's upstream chat is deleted after it.

Owns ``ThrowawayChats``. The gateway sends the whole history with a fresh ``chat_id`` per
request, and the upstream keeps each as a chat in the account: left alone they pile up (and
server history stacks on the re-sent one, PROTOCOL.md section 6.4). So ``begin`` names the
chat and writes it down in Redis (queued in the shared batch at once), ``written`` holds the
completion until Redis has it (a replica SIGKILLed between the two would otherwise leave the
chat for good: the one window left is a chat the upstream made first, ``ZAI_CREATE_CHATS``,
whose id is known only once made), and ``end`` deletes it upstream (``DELETE
/api/v1/chats/{id}``) in the background once the answer is over, whatever the outcome: "not
found" counts as deleted. What cannot be deleted now (an upstream error, the route's WAF
breaker open, a replica killed mid-answer) stays in the ledger with a deadline; ``sweep``,
run by every replica's upkeep, claims due chats and tries again, backing off per failure.
A guest's chat is left alone unless ``ZAI_DELETE_GUEST_CHATS``: anonymous mode signs in a
fresh guest for each request and never uses it again, so nobody sees that account's chats,
while each delete is one more upstream call for the WAF to count and the pacer to slot.
"""

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from loguru import logger
from redis.exceptions import RedisError

from server.core.errors import GatewayError
from server.ids import uuid4_text
from server.zai.client import ZaiClient
from server.zai.identity import Credential
from state.chats import ChatLedger, PendingChat
from state.keys import token_id

__all__ = ["ThrowawayChats"]

_SWEEP_BATCH = 50
_GIVE_UP = 30  # failed deletes of one chat before it is dropped from the ledger
_BACKOFF_CAP = 600.0


class ThrowawayChats:
    """The chats this process opened upstream, and the shared ledger of those to delete.

    Used as::

        chat_id = chats.begin(cred)   # before the completion is sent (or the created id)
        ...
        chats.end(cred, chat_id)      # after it, in every outcome (deletes in the background)
        await chats.sweep()           # from the upkeep loop: retries, and dead replicas' chats
    """

    def __init__(
        self,
        ledger: ChatLedger,
        client: ZaiClient,
        hold: float,
        retry: float,
        pooled_token: Callable[[str], Awaitable[str | None]],
        waf_open: Callable[[], Awaitable[bool]] | None = None,
        guests: bool = False,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.hold = hold  # seconds a chat stays ours without a renewal
        self.retry = retry  # seconds before a failed delete is tried again (doubling)
        self.pooled_token = pooled_token  # token id -> the pooled token, if still pooled
        self.waf_open = waf_open
        self.guests = guests  # whether guests' chats are deleted too
        # chat id -> (the chat, its ledger write)
        self.open: dict[str, tuple[PendingChat, asyncio.Future[Any]]] = {}
        self._tasks: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"<ThrowawayChats open={len(self.open)} deleting={len(self._tasks)}>"

    def begin(self, cred: Credential, chat_id: str = "") -> str:
        """Write the chat down for deletion: ``chat_id`` when the upstream made it (created
        first), else a new id the completion will name."""
        chat_id = chat_id or uuid4_text()
        if self._deletes(cred):
            chat = _owned(cred, chat_id)
            written = self.ledger.open(chat, self.hold)
            written.add_done_callback(partial(_written, chat))
            self.open[chat_id] = chat, written
        return chat_id

    async def written(self, chat_id: str) -> None:
        """Until Redis has the chat (or its write failed, logged): wait here before sending
        its completion, as a replica killed after the upstream has a chat and before the
        ledger does leaves that chat in the account for good. The write left when ``begin``
        queued it, so what the request did since (uploads, the pick's answer) overlapped it."""
        entry = self.open.get(chat_id)
        if entry is not None and not entry[1].done():
            await asyncio.wait([entry[1]])

    def end(self, cred: Credential, chat_id: str) -> None:
        if self._deletes(cred):
            chat, written = self.open.pop(chat_id, None) or (_owned(cred, chat_id), None)
            self._spawn(self._delete_after(written, cred.token, chat, cred.role != "guest"))

    def _deletes(self, cred: Credential) -> bool:
        return self.guests or cred.role == "user"

    async def renew(self) -> None:
        """Keep the chats whose answers still stream here out of other replicas' sweeps."""
        await self.ledger.renew([chat.member for chat, _ in self.open.values()], self.hold)

    async def sweep(self) -> int:
        """Delete the chats that are due (failed before, or left by a replica that died)."""
        done = 0
        for chat in await self.ledger.claim(_SWEEP_BATCH, self.hold):
            token = chat.guest or (await self.pooled_token(chat.token_id) or "")
            if not token:  # the token left the pool: nothing can delete its chats now
                await self.ledger.done(chat)
                continue
            done += await self._delete(token, chat, pooled=not chat.guest)
        return done

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the deletes in flight, so a stopping replica leaves few behind;
        cancel the rest (their chats stay in the ledger for another replica's sweep)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        left = set(self._tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)

    def _spawn(self, work: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)
        return task

    async def _delete_after(
        self, written: "asyncio.Future[Any] | None", token: str, chat: PendingChat, pooled: bool
    ) -> None:
        if written is not None:
            # In the ledger first: if the delete fails, the sweep has it. ``wait``, not
            # ``await``: a failed write was logged where it settled, and a drain that cancels
            # this task leaves the shared write alone.
            await asyncio.wait([written])
        await self._delete(token, chat, pooled)

    async def _delete(self, token: str, chat: PendingChat, pooled: bool = True) -> int:
        try:
            if self.waf_open is not None and await self.waf_open():
                await self.ledger.later(chat, self.retry)  # send nothing while blocked
                return 0
            try:
                gone = await self.client.delete_chat(token, chat.chat_id, pooled)
            except GatewayError as exc:
                if chat.tries + 1 >= _GIVE_UP:
                    logger.warning("giving up deleting chat {}: {}", chat.chat_id, exc.message)
                    await self.ledger.done(chat)
                    return 0
                wait = min(_BACKOFF_CAP, self.retry * 2**chat.tries)
                logger.info(
                    "chat {} not deleted ({}); again in {:.0f} s", chat.chat_id, exc.kind, wait
                )
                await self.ledger.later(chat, wait)
                return 0
            if not gone:
                logger.info("chat {} cannot be deleted: its token is no longer valid", chat.chat_id)
            await self.ledger.done(chat)
            return 1
        except RedisError as exc:  # left in the ledger as it was: its deadline brings it back
            logger.warning("chat {} ledger unreachable: {}", chat.chat_id, exc)
            return 0


def _written(chat: PendingChat, written: "asyncio.Future[Any]") -> None:
    failure = None if written.cancelled() else written.exception()
    if failure is not None:
        logger.warning(
            "chat {} not written down (shared state unreachable): {}", chat.chat_id, failure
        )


def _owned(cred: Credential, chat_id: str) -> PendingChat:
    """The chat as the ledger writes it down: a pooled token by its id, a guest by its token."""
    if cred.role == "user":
        return PendingChat(chat_id, "", token_id(cred.token))
    return PendingChat(chat_id, cred.token, "")
