"""The admin API for client keys and their usage (``ADMIN_TOKEN``, Bearer, like the rest).

Owns the routes:

- ``POST /v1/keys``: ``{"name", "models"?, "rpm"?, "tpm"?, "tpd"?, "expires_at"?,
  "disabled"?}`` -> 201 with the key and its secret (``"key"``), shown this once: only its
  SHA-256 is stored. Limits are per key across every replica; 0 or absent means no limit;
  ``models`` (names of the model table) limits which models it may use; ``expires_at`` is
  unix seconds.
- ``GET /v1/keys``, ``GET /v1/keys/{id}``: the keys, never a secret.
- ``PATCH /v1/keys/{id}``: any of the fields above (``"expires_at": null`` clears it);
  ``"disabled": true`` refuses the key's next request, on every replica.
- ``DELETE /v1/keys/{id}``: gone, with its limit state; its usage stays.
- ``GET /v1/usage?key=&from=&to=&group_by=``: counts per key, model and UTC day
  (``from``/``to`` are ``YYYY-MM-DD``, default today; ``group_by`` a comma list of
  ``key``, ``model``, ``day``, default ``key``), for issued keys, ``AUTH_TOKEN(S)``
  (``env-...`` ids) and ``anonymous``.
"""

import datetime as dt
from typing import Annotated, Any, TypeVar

import msgspec

from server.core.errors import GatewayError
from server.core.models import find_model
from server.ops.admin import AdminHandler
from server.web.errors import decode_json, validation_error
from server.web.handler import api
from state.client_keys import ClientKey
from state.usage import GROUPS, MAX_DAYS

__all__ = ["KeyList", "OneKey", "UsageReport"]

Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    models: list[str] = []
    rpm: Count = 0
    tpm: Count = 0
    tpd: Count = 0
    expires_at: Annotated[float, msgspec.Meta(gt=0)] | None = None
    disabled: bool = False


class KeyChange(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    models: list[str] | msgspec.UnsetType = msgspec.UNSET
    rpm: Count | msgspec.UnsetType = msgspec.UNSET
    tpm: Count | msgspec.UnsetType = msgspec.UNSET
    tpd: Count | msgspec.UnsetType = msgspec.UNSET
    expires_at: Annotated[float, msgspec.Meta(gt=0)] | msgspec.UnsetType | None = msgspec.UNSET
    disabled: bool | msgspec.UnsetType = msgspec.UNSET


_S = TypeVar("_S", bound=msgspec.Struct)


def _decode(body: bytes, shape: type[_S]) -> _S:
    raw = decode_json(body, msgspec.json.decode)
    try:
        value = msgspec.convert(raw, shape)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    models = getattr(value, "models", msgspec.UNSET)
    if isinstance(models, list):
        ids = [_model_id(name, i) for i, name in enumerate(models)]
        value = msgspec.structs.replace(value, models=ids)
    return value


def _model_id(name: str, index: int) -> str:
    found = find_model(name)
    if found is None:
        raise GatewayError(
            "invalid_request",
            f"models[{index}]: no model {name!r} (see GET /v1/models)",
            param=f"models[{index}]",
        )
    return found.id


def _shown(key: ClientKey) -> dict[str, Any]:
    """A key as the API shows it: everything but the secret, which is not stored."""
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "models": [found.id for m in key.models if (found := find_model(m))],
        "rpm": key.rpm,
        "tpm": key.tpm,
        "tpd": key.tpd,
        "expires_at": int(key.expires_at) if key.expires_at else None,
        "disabled": key.disabled,
        "created_at": int(key.created_at),
    }


class KeyList(AdminHandler):
    @api
    async def post(self) -> None:
        self.authenticate()
        new = _decode(self.request.body, NewKey)
        values = msgspec.structs.asdict(new)
        key, secret = await self.services.client_keys.create(**values)
        self.set_status(201)
        self.write({**_shown(key), "key": secret})

    @api
    async def get(self) -> None:
        self.authenticate()
        keys = await self.services.client_keys.list()
        self.write({"object": "list", "data": [_shown(key) for key in keys]})


class OneKey(AdminHandler):
    def missing(self, kid: str) -> GatewayError:
        return GatewayError("not_found", f"no key {kid!r}")

    @api
    async def get(self, kid: str) -> None:
        self.authenticate()
        key = await self.services.client_keys.get(kid)
        if key is None:
            raise self.missing(kid)
        self.write(_shown(key))

    @api
    async def patch(self, kid: str) -> None:
        self.authenticate()
        change = _decode(self.request.body, KeyChange)
        values = {
            name: value
            for name in change.__struct_fields__
            if (value := getattr(change, name)) is not msgspec.UNSET
        }
        key = await self.services.client_keys.update(kid, **values)
        if key is None:
            raise self.missing(kid)
        self.write(_shown(key))

    @api
    async def delete(self, kid: str) -> None:
        self.authenticate()
        if not await self.services.client_keys.delete(kid):
            raise self.missing(kid)
        self.write({"id": kid, "object": "api_key", "deleted": True})


def _day(text: str, param: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise GatewayError(
            "invalid_request", f"{param} must be a date like 2026-12-02", param=param
        ) from None


class UsageReport(AdminHandler):
    @api
    async def get(self) -> None:
        self.authenticate()
        today = dt.datetime.now(dt.UTC).date()
        first = _day(self.get_argument("from", today.isoformat()), "from")
        last = _day(self.get_argument("to", first.isoformat()), "to")
        if last < first or (last - first).days >= MAX_DAYS:
            raise GatewayError(
                "invalid_request", f"from..to must be 1 to {MAX_DAYS} days", param="to"
            )
        groups = tuple(g.strip() for g in self.get_argument("group_by", "key").split(",") if g)
        if not groups or any(g not in GROUPS for g in groups):
            raise GatewayError(
                "invalid_request", "group_by is a comma list of key, model, day", param="group_by"
            )
        key = self.get_argument("key", "")
        usage = self.services.usage
        await usage.flush()  # this process's latest counts are in the answer too
        rows = await usage.query([key] if key else None, first, last, groups)
        self.write(
            {
                "object": "list",
                "from": first.isoformat(),
                "to": last.isoformat(),
                "group_by": list(groups),
                "data": rows,
            }
        )
