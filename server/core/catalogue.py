"""The live model catalogue: the static table kept up to date from the upstream's own lists.

Owns ``Catalogue``. ``GET /api/models`` answers each tier its own list (a guest token sees
fewer models than a user's), so the catalogue keeps one list per tier in Redis (``<p>facts``,
``models_guest`` / ``models_user``), read by every replica and trusted ``ttl`` seconds; the
table clients see is ``models.merge`` of the static table with them. A list costs no extra
sign-in: it is read with a token that has just served a completion (``offer``), with a
pooled user token, or, only when a client asks for the list or for a name nobody knows,
with a fresh guest. Requests never wait on the upstream for it, except those two: the model
list and a name the table lacks wait (bounded) for one refresh, at most once per
``_MISS_EVERY`` seconds per process, so a typo costs no upstream call.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
from loguru import logger
from redis.exceptions import RedisError

from server.core.errors import GatewayError
from server.core.models import STATIC, LiveModel, Model, ModelTable, merge
from server.zai.client import ZaiClient
from server.zai.identity import Credential
from server.zai.models import UpstreamModel
from state.facts import Facts

__all__ = ["Catalogue"]

TIERS = ("guest", "user")
_LOCAL_TTL = 30.0  # seconds a process trusts its merged table before re-reading Redis
_MISS_EVERY = 30.0  # seconds between refreshes an unknown name may cause
_WAIT = 10.0  # the longest a request waits for a refresh
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[UpstreamModel]).decode

Listers = Callable[[], Awaitable[list[Credential]]]


class Catalogue:
    """The model table of this process. Used as::

    table = await catalogue.current()   # what names mean now (no upstream wait)
    model = await catalogue.require(name)  # 404 listing the models, after one refresh
    catalogue.offer(cred)                # a token that just worked may read the list
    """

    def __init__(
        self,
        client: ZaiClient,
        facts: Facts | None,
        ttl: float = 300.0,
        live: bool = True,
        listers: Listers | None = None,
    ) -> None:
        self.client = client
        self.facts = facts
        self.ttl = ttl
        self.live = live
        self.listers = listers  # tokens to read the lists with when none was offered
        self.table: ModelTable = STATIC
        self._read_at = float("-inf")  # monotonic time the shared lists were last read
        self._missed_at = float("-inf")
        self._lists: dict[str, list[UpstreamModel]] = {}
        self._fresh: dict[str, float] = {}  # tier -> monotonic time its list expires
        self._busy: set[str] = set()  # tiers being fetched in the background
        self._refresh: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        tiers = ",".join(sorted(self._lists)) or "static"
        return f"<Catalogue {len(self.table.listed)} models from {tiers}>"

    async def current(self) -> ModelTable:
        if self.live and time.monotonic() - self._read_at >= min(self.ttl, _LOCAL_TTL):
            self._read_at = time.monotonic()
            await self._read_shared()
        return self.table

    async def listing(self) -> ModelTable:
        """The table for ``/v1/models``: read from the upstream first if no list is known."""
        table = await self.current()
        if self.live and not self._lists:
            await self._refresh_once()
        return self.table if self.live else table

    async def require(self, name: str, claude: dict[str, str] | None = None) -> Model:
        table = await self.current()
        found = table.find(name, claude)
        if found is not None or not self.live:
            return table.require(name, claude)
        now = time.monotonic()
        if now - self._missed_at >= _MISS_EVERY:
            self._missed_at = now
            await self._refresh_once()
        return self.table.require(name, claude)

    def offer(self, cred: Credential) -> None:
        """A token that just served a completion: read its tier's list with it if stale."""
        tier = "user" if cred.role == "user" else "guest"
        if self.live and tier not in self._busy and time.monotonic() >= self._fresh.get(tier, 0):
            self._busy.add(tier)
            task = asyncio.ensure_future(self._fetch_tier(tier, cred.token))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)

    async def _refresh_once(self) -> None:
        """Read every list the listers can, one refresh at a time per process."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_all())
        try:
            await asyncio.wait_for(asyncio.shield(self._refresh), _WAIT)
        except TimeoutError:
            logger.warning(
                "the upstream's model list took over {:.0f} s; using what is known", _WAIT
            )

    async def _refresh_all(self) -> None:
        if self.listers is None:
            return
        try:
            creds = await self.listers()
        except (GatewayError, RedisError) as exc:
            logger.warning("no token to read the upstream's model list with: {}", exc)
            return
        await asyncio.gather(*(self._fetch_tier(_tier(c), c.token) for c in creds))

    async def _fetch_tier(self, tier: str, token: str) -> None:
        try:
            rows = await self.client.models(token, pooled=tier == "user")
        except GatewayError as exc:
            logger.warning("cannot read the upstream's model list ({}): {}", tier, exc.message)
            self._fresh[tier] = time.monotonic() + _MISS_EVERY  # not again at once
            return
        finally:
            self._busy.discard(tier)
        self._lists[tier] = rows
        self._fresh[tier] = time.monotonic() + self.ttl
        self._rebuild()
        if self.facts is not None:
            try:
                await self.facts.put(f"models_{tier}", _encode(rows).decode())
            except RedisError as exc:
                logger.debug("could not share the model list: {}", exc)

    async def _read_shared(self) -> None:
        if self.facts is None:
            return
        changed = False
        for tier in TIERS:
            try:
                raw = await self.facts.get(f"models_{tier}", self.ttl)
            except RedisError as exc:
                logger.debug("shared model lists unreachable: {}", exc)
                return
            if raw is None:
                continue
            try:
                self._lists[tier] = _decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            self._fresh[tier] = time.monotonic() + _LOCAL_TTL
            changed = True
        if changed:
            self._rebuild()

    def _rebuild(self) -> None:
        seen: dict[str, LiveModel] = {}
        for tier in TIERS:
            for row in self._lists.get(tier, []):
                key = row.id.lower()
                known = seen.get(key)
                tiers = (known.tiers if known else frozenset()) | {tier}
                caps = {**(known.capabilities if known else {}), **row.capabilities}
                seen[key] = LiveModel(row.id, row.name, row.active, row.hidden, caps, tiers)
        before = {m.id for m in self.table.listed}
        self.table = merge(seen.values(), frozenset(self._lists))
        added = sorted({m.id for m in self.table.listed} - before)
        if added:
            logger.info("model catalogue: {} from the upstream's list", ", ".join(added))


def _tier(cred: Credential) -> str:
    return "user" if cred.role == "user" else "guest"
