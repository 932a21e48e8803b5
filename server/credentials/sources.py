"""Where upstream credentials come from, behind one small interface.

Owns the ``TokenSource`` protocol and its three sources. The core asks ``acquire(model)``
before each upstream attempt and reports back with ``release(cred, outcome, reason)``
(``ok``, or the ``token`` column of ``server.core.errors.RULES``: ``spare``, ``cooldown``,
``dead``); ``release`` answers the cooldown it gave (seconds, for the client's Retry-After).

- ``GuestTokens``: anonymous mode, a fresh guest per request (so no two clients share a
  server-side chat), taken from the shared reserve when there is one, else signed in on the
  spot; a low reserve is refilled in the background.
- ``PooledTokens``: the shared Redis pool of user tokens (``state.pool``; with an issued key's
  ``KeyCheck``, checked in the same round trip as the pick), falling back to a
  guest when no pooled token is usable and ``ANONYMOUS_MODE`` allows (and the model is open
  to guests); otherwise 429 ``rate_limited`` when every token is cooling (only the upstream's
  rate limits cool a token) and 503 ``pool_exhausted`` when they are busy, dead or unchecked,
  both with ``Retry-After``. If Redis is unreachable it fails fast.
- ``NoTokens``: neither configured; every request hears why.
"""

import asyncio
import collections
import time
from typing import Protocol

from loguru import logger
from redis.exceptions import RedisError

from server.core.admission import refusal
from server.core.errors import GatewayError
from server.core.models import Model
from server.ops.metrics import GUESTS
from server.ops.tracing import traced
from server.zai.client import ZaiClient
from server.zai.identity import Credential, user_id_of
from state.client_keys import KeyCheck
from state.conversations import Thread
from state.guests import SIGNINS_PACED, SIGNINS_UNPACED, GuestReserve, StoredGuest
from state.pacing import Pacer
from state.pool import Pick, TokenPool, Unavailable

__all__ = ["GuestTokens", "NoTokens", "PooledTokens", "TokenSource"]


class TokenSource(Protocol):
    async def acquire(
        self, model: Model, thread: Thread | None = None, check: KeyCheck | None = None
    ) -> Credential: ...

    async def release(self, cred: Credential, outcome: str, reason: str = "") -> float: ...


class GuestTokens:
    """Anonymous mode: every acquire is a guest nobody else used."""

    def __init__(
        self, client: ZaiClient, reserve: GuestReserve | None = None, pacer: Pacer | None = None
    ) -> None:
        self.client = client
        self.reserve = reserve
        self.pacer = pacer  # paced sign-ins: a refill keeps fewer of them in flight
        self._refill: asyncio.Task[None] | None = None
        # Guests this process popped ahead, and the one round trip popping more: every
        # request waiting when it starts is served by it (a batch at least, so the next few
        # requests need no round trip; at most a batch is left over here).
        self._held: collections.deque[StoredGuest] = collections.deque()
        self._batch = max(1, min(8, reserve.size // 4)) if reserve is not None else 1
        self._taking: asyncio.Future[bool] | None = None
        self._waiting = 0
        self._top_up_at = 0.0

    def __repr__(self) -> str:
        return f"<GuestTokens reserve={self.reserve!r}>"

    @traced("pick guest", lambda self, model, thread=None, check=None: {"zai.source": "guests"})
    async def acquire(
        self, model: Model, thread: Thread | None = None, check: KeyCheck | None = None
    ) -> Credential:
        # A guest serves one request and is never used again: a conversation is not
        # continued on one (each turn is a fresh chat with the whole history).
        reserve = self.reserve
        while reserve is not None and reserve.size:
            while self._held:
                guest = self._held.popleft()
                if reserve.fresh(guest):
                    FROM_RESERVE.inc()
                    return Credential(guest.token, guest.user_id, "guest", guest.name)
            self._waiting += 1
            try:
                if self._taking is None:
                    self._taking = asyncio.ensure_future(self._take(reserve))
                got = await asyncio.shield(self._taking)
            finally:
                self._waiting -= 1
            if not got:
                break  # the reserve is empty or unreachable: sign in directly
        SIGNED_IN.inc()
        return await self.client.guest_credential()

    async def _take(self, reserve: GuestReserve) -> bool:
        try:
            guests, left = await reserve.take(self._batch + self._waiting - 1)
        except RedisError as exc:
            logger.warning("guest reserve unreachable, signing in directly: {}", exc)
            guests, left = [], reserve.size
        finally:
            self._taking = None
        if reserve.low(left) or (left < reserve.target and time.monotonic() >= self._top_up_at):
            # Below half: refill now. Otherwise top it up at most twice a second, so a
            # sustained load finds it full instead of draining it to half first.
            self._top_up_at = time.monotonic() + _TOP_UP_EVERY
            self.refill_soon()
        self._held.extend(guests)
        return bool(guests)

    async def release(self, cred: Credential, outcome: str, reason: str = "") -> float:
        return 0.0

    async def stop(self) -> None:
        """Cancel a refill going on: its sign-ins close their upstream calls as they stop
        (left running, a closed event loop dropped them with their connections open)."""
        refill, self._refill = self._refill, None
        if refill is not None and not refill.done():
            refill.cancel()
            await asyncio.gather(refill, return_exceptions=True)

    def refill_soon(self) -> None:
        if self.reserve is None or (self._refill is not None and not self._refill.done()):
            return
        self._refill = asyncio.ensure_future(self._fill(self.reserve))

    async def _fill(self, reserve: GuestReserve) -> None:
        async def fetch() -> StoredGuest:
            cred = await self.client.guest_credential()
            return StoredGuest(cred.token, cred.user_id, cred.name, time.time())

        try:
            paced = self.pacer is not None and not self.pacer.off  # gaps may be set live
            added = await reserve.refill(fetch, SIGNINS_PACED if paced else SIGNINS_UNPACED)
            if added:
                logger.debug("guest reserve refilled with {}", added)
        except (RedisError, GatewayError) as exc:
            logger.warning("guest reserve refill failed: {}", exc)


_TOP_UP_EVERY = 0.5  # seconds between top-ups of a reserve that is not yet low
FROM_RESERVE, SIGNED_IN = GUESTS.labels("reserve"), GUESTS.labels("inline")


class PooledTokens:
    """User tokens from the shared pool, one lease per upstream attempt."""

    def __init__(self, pool: TokenPool, guests: GuestTokens | None) -> None:
        self.pool = pool
        self.guests = guests
        self._empty_until = 0.0  # an empty pool is remembered briefly: one round trip saved

    def __repr__(self) -> str:
        return f"<PooledTokens {self.pool!r} guest_fallback={self.guests is not None}>"

    @traced("pick token", lambda self, model, thread=None, check=None: {"zai.source": "pool"})
    async def acquire(
        self, model: Model, thread: Thread | None = None, check: KeyCheck | None = None
    ) -> Credential:
        if check is not None and check.admission is None:
            pick = await self._pick_and_check(model, thread, check)
        elif self.guests is not None and model.guest and time.monotonic() < self._empty_until:
            return await self.guests.acquire(model)
        else:
            picked = await self._pick(model, thread)
            if picked is None:
                return await self._guest(model)
            pick = picked
        if isinstance(pick, Unavailable) and pick.reason == "busy" and self.pool.releasing:
            # A release of this process is on its way (sent after its answer): it may be
            # what frees a slot. Once Redis has it, one more pick (the key was checked).
            await self.pool.releases_sent()
            pick = await self._pick(model, thread) or pick
        if isinstance(pick, Pick):
            return Credential(
                pick.token,
                pick.user_id or user_id_of(pick.token),
                pick.role or "user",
                pick.name or "User",
                lease=pick.lease,
                mapping=pick.mapping,
            )
        if pick.reason == "conv_busy":
            raise GatewayError(
                "conversation_busy",
                "another turn of this conversation is still being answered",
                model=model.id,
                retry_after=max(0.1, pick.retry_after),
            )
        if pick.reason == "empty":
            self._empty_until = time.monotonic() + _EMPTY_FOR
        if self.guests is not None and model.guest:
            return await self.guests.acquire(model)
        why = {
            "busy": "every pooled upstream token is at its concurrency limit",
            "cooling": "every pooled upstream token is cooling down after the upstream "
            "rate-limited it",
            "empty": "no pooled upstream token is usable (all dead or none validated yet)",
            "revoked": "the shared state store answered after the request gave up",
        }[pick.reason]
        if not model.guest and self.guests is not None:
            why += f"; model {model.id} needs a user token, so a guest cannot stand in"
        kind = _UNAVAILABLE_KINDS[pick.reason]
        raise GatewayError(kind, why, model=model.id, retry_after=pick.retry_after or None)

    async def _guest(self, model: Model) -> Credential:
        assert self.guests is not None  # _pick answers None only when one may stand in
        return await self.guests.acquire(model)

    async def _pick(self, model: Model, thread: Thread | None) -> Pick | Unavailable | None:
        """The pick alone; None when Redis failed and a guest may stand in."""
        try:
            return await self.pool.acquire(thread)
        except RedisError as exc:
            if self.guests is not None and model.guest:
                return None
            raise GatewayError("state_unavailable", str(exc) or type(exc).__name__) from None

    async def _pick_and_check(
        self, model: Model, thread: Thread | None, check: KeyCheck
    ) -> Pick | Unavailable:
        """The pick with the client key's check before it in one round trip (they are on
        different hash tags, so not one script). A refused key gives back the lease it got,
        off the path, and hears its refusal; the key's reservation stands either way, as it
        would have with the check alone (settled once the request ends)."""
        try:
            pick, reply = await self.pool.acquire_with(thread, check.call)
            admission = check.answered(reply)
        except RedisError as exc:
            raise GatewayError("state_unavailable", f"checking the API key: {exc}") from None
        refused = refusal(admission, model.id)
        if refused is not None:
            if isinstance(pick, Pick):
                self.pool.release_soon(pick.lease, "spare")
            raise refused
        return pick

    async def release(self, cred: Credential, outcome: str, reason: str = "") -> float:
        if cred.lease is None:
            return 0.0
        if outcome == "ok":  # nothing to wait for: batched and sent after the answer
            self.pool.release_soon(cred.lease)
            return 0.0
        try:
            return await self.pool.release(cred.lease, outcome, reason)
        except RedisError as exc:
            # The lease has a deadline: it lapses by itself.
            logger.warning("could not release lease on {}: {}", cred.masked, exc)
            return 0.0


_EMPTY_FOR = 1.0  # seconds; a token added meanwhile is used at most this much later
# Only the upstream's rate limits cool a token, so a pool that is all cooling is the upstream
# saying "too many": the client hears that (429), not that the gateway is broken (503).
_UNAVAILABLE_KINDS = {
    "cooling": "rate_limited",
    "busy": "pool_exhausted",
    "empty": "pool_exhausted",
    "revoked": "state_unavailable",  # only a call that ran after its caller gave up sees it
}


class NoTokens:
    """Neither anonymous mode nor a pool: every request is refused with the reason."""

    def __repr__(self) -> str:
        return "<NoTokens>"

    async def acquire(
        self, model: Model, thread: Thread | None = None, check: KeyCheck | None = None
    ) -> Credential:
        raise GatewayError(
            "no_upstream_token",
            "the gateway has no upstream token to use: ANONYMOUS_MODE is off and no user "
            "tokens are configured (AUTH_TOKENS_FILE, ZAI_TOKENS or the admin API)",
        )

    async def release(self, cred: Credential, outcome: str, reason: str = "") -> float:
        return 0.0
