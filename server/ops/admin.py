"""The operator's face: the token pool and the live instances, only with ``ADMIN_TOKEN``.

Owns the admin routes. Without ``ADMIN_TOKEN`` set they answer 404 (they do not exist);
with a wrong token, or one sent other than as ``Authorization: Bearer``, 401. Tokens only
ever appear masked.

- ``GET /v1/token-pool/status``: every token's state, failures, cooldown left, leases, uses;
  each egress route (id, label with credentials masked, seconds its WAF breaker has left).
- ``POST /v1/token-pool/health-check``: check every token against the upstream now.
- ``POST /v1/token-pool/update``: ``{"action": "add"|"remove"|"replace", "tokens": [...]}``
  (or a bare JSON list, meaning add); new tokens are checked before the answer.
  ``remove`` accepts tokens or their ids.
- ``GET /v1/instances``: the gateway processes alive now.
- ``GET /v1/upstream/check``: the self-check, step by step on every egress route
  (``?complete=1`` adds a one-token completion); ``server/ops/upstream_check.py``.
- ``POST /v1/captcha``: ``{"params": [...], "ttl": 75}`` adds single-use captcha params to the
  shared pool; answers the live depth. Params are never echoed or logged.
- ``GET/PUT/DELETE /v1/upstream/config``: the live upstream config (``server/live_config.py``):
  PUT ``{"<setting>": value, ...}`` changes those settings for every replica (``null``: back to
  the environment's), DELETE drops every change; each answers the config now.
"""

import dataclasses
from typing import Annotated, Literal

import msgspec

from server.core.errors import GatewayError
from server.credentials.checks import TOKEN_PATTERN
from server.live_config import LiveConfig
from server.ops.upstream_check import check_upstream
from server.web.errors import decode_json, validation_error
from server.web.handler import ApiHandler, api, check_api_key
from state.keys import token_id

__all__ = [
    "CaptchaPush",
    "InstanceList",
    "PoolHealthCheck",
    "PoolStatus",
    "PoolUpdate",
    "UpstreamCheck",
    "UpstreamConfig",
]


class PoolChange(msgspec.Struct):
    tokens: list[Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN)]]
    action: Literal["add", "remove", "replace"] = "add"


class CaptchaParams(msgspec.Struct):
    params: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]],
        msgspec.Meta(max_length=1000),
    ]
    ttl: Annotated[float, msgspec.Meta(gt=0)] = 75.0


class AdminHandler(ApiHandler):
    route = "admin"

    def authenticate(self) -> None:
        admin = self.services.settings.admin_token
        if not admin:
            raise GatewayError("not_found", f"no route {self.request.method} {self.request.path}")
        # Bearer only, as the README says: x-api-key is what clients' SDKs send, and a
        # client key header must never be read as the admin's.
        header = self.request.headers.get("Authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not check_api_key(presented, (admin,)):
            raise GatewayError(
                "invalid_api_key",
                "the admin token is missing or wrong (send 'Authorization: Bearer <ADMIN_TOKEN>')",
            )

    async def write_status(self) -> None:
        rows = [dataclasses.asdict(row) for row in await self.services.pool.status()]
        summary = {state: 0 for state in ("active", "cooling", "dead", "pending")}
        for row in rows:
            summary[row["state"]] += 1
        pool = self.services.captchas.pool
        depth = await pool.depth() if pool is not None else 0
        routes = await self.services.egress.status()
        self.write(
            {"tokens": rows, "summary": summary, "captcha": {"depth": depth}, "routes": routes}
        )


class PoolStatus(AdminHandler):
    @api
    async def get(self) -> None:
        self.authenticate()
        await self.write_status()


class PoolHealthCheck(AdminHandler):
    @api
    async def post(self) -> None:
        self.authenticate()
        results = await self.services.health_check()
        self.write({"checked": [dataclasses.asdict(row) for row in results]})


class PoolUpdate(AdminHandler):
    @api
    async def post(self) -> None:
        self.authenticate()
        change = _decode_change(self.request.body)
        pool = self.services.pool
        if change.action == "remove":
            await pool.remove([t if len(t) == 16 else token_id(t) for t in change.tokens])
        else:
            if change.action == "replace":
                keep = {token_id(t) for t in change.tokens}
                await pool.remove([tid for tid in await pool.tokens() if tid not in keep])
            ids = await pool.add(change.tokens)
            # A token another admin call removed meanwhile is simply not there to check.
            states = {row.id: row.state for row in await pool.status()}
            await self.services.health_check([t for t in ids if states.get(t) == "pending"])
        await self.write_status()


class InstanceList(AdminHandler):
    @api
    async def get(self) -> None:
        self.authenticate()
        self.write({"instances": await self.services.instances.live()})


class UpstreamCheck(AdminHandler):
    @api
    async def get(self) -> None:
        self.authenticate()
        complete = self.get_query_argument("complete", "") in ("1", "true", "yes")
        self.write(await check_upstream(self.services, complete))


class UpstreamConfig(AdminHandler):
    @api
    async def get(self) -> None:
        self.authenticate()
        self.write(self._live().view())

    @api
    async def put(self) -> None:
        self.authenticate()
        values = decode_json(self.request.body, msgspec.json.decode)
        if not isinstance(values, dict) or not values:
            raise GatewayError(
                "invalid_request",
                'the body must be a JSON object of settings, like {"zai_fe_version": '
                '"prod-fe-1.2.0"} (null puts one back to its environment value)',
            )
        live = self._live()
        await live.change(values)
        self.write(live.view())

    @api
    async def delete(self) -> None:
        self.authenticate()
        live = self._live()
        await live.reset()
        self.write(live.view())

    def _live(self) -> LiveConfig:
        live = self.services.live
        if live is None:
            raise GatewayError("not_found", "no live upstream config in this gateway")
        return live


class CaptchaPush(AdminHandler):
    @api
    async def post(self) -> None:
        self.authenticate()
        raw = decode_json(self.request.body, msgspec.json.decode)
        try:
            push = msgspec.convert(raw, CaptchaParams)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from None
        limit = self.services.settings.captcha_ttl_max
        if push.ttl > limit:
            raise GatewayError(
                "invalid_request", f"ttl must be at most {limit:g} seconds", param="ttl"
            )
        pool = self.services.captchas.pool
        if pool is None:
            raise GatewayError("not_found", "no captcha pool in this gateway")
        depth = await pool.push(push.params, push.ttl)
        self.write({"added": len(push.params), "captcha": {"depth": depth}})


def _decode_change(body: bytes) -> PoolChange:
    raw = decode_json(body, msgspec.json.decode)
    if isinstance(raw, list):
        raw = {"tokens": raw}
    try:
        return msgspec.convert(raw, PoolChange)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
