"""The fake upstream's ``GET /api/models`` catalogue. SYNTHESIZED, not a capture.

No capture of ``/api/models`` exists. This is written from PROTOCOL.md section 6.5/6.6 (the ids
listed there, ``is_active``, ``info.meta.hidden``, ``info.meta.capabilities``) and from how the
working peers read it (GLM-Free-API ``internal/zbridge``: ``data[].info.meta.capabilities`` as a
map whose ``reasoning_effort`` and ``vision`` are booleans; Open WebUI, which the page is built
on, keeps ``is_active`` in ``info`` and ``hidden`` in ``info.meta``). Which tier sees which
model ("guests typically get only glm-5.3-flash and glm-4.7", 6.5) is the ``guest`` flag of each
row: the fake shows a guest token only the rows a guest may use, and refuses the others the
way the upstream does (in-band 403 "Model not available for current user level").
"""

from __future__ import annotations

import copy

__all__ = ["catalogue", "entry"]

# upstream id, display name, guest may use, capabilities
_ROWS: list[tuple[str, str, bool, dict[str, bool]]] = [
    ("x-preview-l", "GLM-5.3-Flash", True, {"vision": True, "think": True, "web_search": True}),
    ("glm-5.3", "GLM-5.3", False, {"think": True, "web_search": True, "reasoning_effort": True}),
    ("glm-5.2", "GLM-5.2", False, {"think": True, "web_search": True, "reasoning_effort": True}),
    ("GLM-5-Turbo", "GLM-5-Turbo", False, {"think": True, "web_search": True}),
    ("GLM-5v-Turbo", "GLM-5V-Turbo", False, {"vision": True, "think": True}),
    ("glm-4.7", "GLM-4.7", True, {"think": True, "web_search": True}),
    ("glm-4.6v", "GLM-4.6V", True, {"vision": True, "think": True}),
    ("0727-106B-API", "GLM-4.5-Air", True, {"think": True, "web_search": True}),
    ("0727-360B-API", "GLM-4.5", True, {"think": True, "web_search": True}),
]


def entry(
    upstream: str,
    name: str,
    guest: bool = True,
    capabilities: dict[str, bool] | None = None,
    active: bool = True,
    hidden: bool = False,
) -> dict:
    """One ``data[]`` row in the upstream's shape (plus ``guest``, which only the fake reads:
    the real upstream shows each tier its own list)."""
    return {
        "id": upstream,
        "name": name,
        "object": "model",
        "owned_by": "openai",
        "guest": guest,
        "info": {
            "id": upstream,
            "name": name,
            "is_active": active,
            "meta": {
                "description": f"{name} (synthesized catalogue row)",
                "hidden": hidden,
                "capabilities": dict(capabilities or {}),
            },
        },
    }


_BASE = [entry(upstream, name, guest, caps) for upstream, name, guest, caps in _ROWS]


def catalogue() -> list[dict]:
    """A fresh copy of the catalogue: tests add and deactivate rows on theirs."""
    return copy.deepcopy(_BASE)
