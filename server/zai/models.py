"""The upstream's model list, ``GET /api/models``, decoded once with msgspec.

Owns ``UpstreamModel`` and ``decode_models``. The page is built on Open WebUI, so each row of
``data`` keeps ``is_active`` in ``info`` and ``hidden`` and ``capabilities`` in ``info.meta``
(PROTOCOL.md section 6.5); ``capabilities`` is a map of flags (``vision``, ``think``,
``web_search``, ``reasoning_effort``...). Each tier sees its own list: a guest token fewer
rows than a user's, which is how the gateway learns what needs a user token. Unknown fields
are ignored and a row without an id is dropped, so a changed list degrades instead of failing.
"""

from dataclasses import dataclass, field
from typing import Any

import msgspec

__all__ = ["UpstreamModel", "decode_models"]


class _Meta(msgspec.Struct):
    hidden: bool | None = None
    capabilities: dict[str, Any] | None = None


class _Info(msgspec.Struct):
    is_active: bool | None = None
    meta: _Meta | None = None


class _Row(msgspec.Struct):
    id: str = ""
    name: str = ""
    is_active: bool | None = None
    info: _Info | None = None


class _Listing(msgspec.Struct):
    data: list[_Row] = []


@dataclass(frozen=True, slots=True)
class UpstreamModel:
    id: str
    name: str
    active: bool = True
    hidden: bool = False
    capabilities: dict[str, bool] = field(default_factory=dict)


_decoder = msgspec.json.Decoder(_Listing)


def decode_models(body: bytes) -> list[UpstreamModel]:
    """The rows of an ``/api/models`` answer; raises ``msgspec.DecodeError`` if it is not one."""
    out = []
    for row in _decoder.decode(body).data:
        if not row.id:
            continue
        info = row.info or _Info()
        meta = info.meta or _Meta()
        active = info.is_active if info.is_active is not None else row.is_active
        caps = {k: v for k, v in (meta.capabilities or {}).items() if isinstance(v, bool)}
        out.append(UpstreamModel(row.id, row.name, active is not False, bool(meta.hidden), caps))
    return out
