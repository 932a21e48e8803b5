"""The model table: which names clients may ask for and what each means upstream.

Owns ``Model``, ``ModelTable`` (names -> rows, and what ``/v1/models`` lists), ``STATIC`` (the
table built into this release), ``merge`` (the static table with the upstream's live list,
server/core/catalogue.py keeps it fresh) and ``find_model``/``require_model``. ``FAMILY`` has
one row per upstream model (adding a model is one row); ``VARIANTS`` turns each row into the
exposed names: the plain name, ``-Thinking`` (upstream ``enable_thinking``) and ``-Search``
(upstream web search). Thinking and search are feature flags upstream, not separate model ids
(PROTOCOL.md section 2). ``guest`` says whether guest (anonymous) tokens may use it: since
2026-05 the GLM-5 family needs a user token. Names are matched case-insensitively, as users
type them every which way; the Anthropic face also maps Claude model names to rows chosen by
settings (``CLAUDE_*_MODEL``).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from server.core.errors import GatewayError, shown

__all__ = [
    "MODELS",
    "STATIC",
    "LiveModel",
    "Model",
    "ModelTable",
    "capabilities",
    "find_model",
    "merge",
    "require_model",
]


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    upstream: str
    thinking: bool = False
    search: bool = False
    vision: bool = False
    guest: bool = True
    created: int = 0
    effort: bool = False  # takes features.reasoning_effort (server/core/effort.py)
    can_think: bool = True  # capabilities: thinking can be switched on
    can_search: bool = True  # capabilities: web search can be switched on


# exposed name, upstream id, guest allowed, vision, first seen (unix time), takes effort.
# Effort: GLM-5.2/5.3 per PROTOCOL.md 6.6; 5.3-Flash only if the live catalogue says so
# (one source claims it, and a wrong "yes" breaks answers where a wrong "no" costs little).
FAMILY: list[tuple[str, str, bool, bool, int, bool]] = [
    ("GLM-4.5", "0727-360B-API", True, False, 1753574400, False),
    ("GLM-4.5-Air", "0727-106B-API", True, False, 1753574400, False),
    ("GLM-4.5V", "glm-4.5v", True, True, 1754956800, False),
    ("GLM-4.6", "GLM-4-6-API-V1", True, False, 1759190400, False),
    ("GLM-4.6V", "glm-4.6v", True, True, 1765238400, False),
    ("GLM-4.7", "glm-4.7", True, False, 1766361600, False),
    ("GLM-5", "glm-5", False, False, 1770768000, False),
    ("GLM-5-Turbo", "GLM-5-Turbo", False, False, 1775088000, False),
    ("GLM-5.1", "GLM-5.1", False, False, 1775952000, False),
    ("GLM-5.2", "glm-5.2", False, False, 1788566400, True),
    ("GLM-5.3", "glm-5.3", False, False, 1788566400, True),
    ("GLM-5.3-Flash", "x-preview-l", True, False, 1787184000, False),
]

# suffix, the capability it needs, field overrides
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("", "", {}),
    ("-Thinking", "can_think", {"thinking": True}),
    ("-Search", "can_search", {"search": True}),
]

CLAUDE_FAMILIES = ("opus", "sonnet", "haiku")


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Every name a client may ask for, and the rows ``/v1/models`` lists, in order.

    ``rows`` also holds aliases that are not listed (a live model's upstream id)."""

    rows: dict[str, Model]
    listed: tuple[Model, ...]

    @classmethod
    def of(cls, bases: Iterable[Model], aliases: dict[str, Model] | None = None) -> "ModelTable":
        listed = [
            replace(base, id=base.id + suffix, **overrides)
            for base in bases
            for suffix, needs, overrides in VARIANTS
            if not needs or getattr(base, needs)
        ]
        rows = {alias.lower(): model for alias, model in (aliases or {}).items()}
        rows.update((model.id.lower(), model) for model in listed)
        return cls(rows, tuple(listed))

    def find(self, name: str, claude: dict[str, str] | None = None) -> Model | None:
        """The row for ``name``; with ``claude`` (family -> row name, from settings), Claude
        names (``claude-sonnet-4-5``, ``claude-3-5-haiku-latest``...) map to their family's
        row."""
        found = self.rows.get(name.lower())
        if found is not None or claude is None or not name.lower().startswith("claude"):
            return found
        family = next((f for f in CLAUDE_FAMILIES if f in name.lower()), "sonnet")
        return self.rows.get(claude[family].lower())

    def require(self, name: str, claude: dict[str, str] | None = None) -> Model:
        """The row for ``name``, or a 404 that lists what exists (and, for the Anthropic face,
        says Claude names work)."""
        found = self.find(name, claude)
        if found is not None:
            return found
        names = ", ".join(m.id for m in self.listed)
        hint = "use a Claude model name (claude-opus-*, claude-sonnet-*, claude-haiku-*) or one of"
        listing = f"{hint}: {names}" if claude is not None else f"available models: {names}"
        raise GatewayError(
            "model_not_found", f"the model '{shown(name)}' does not exist; {listing}", param="model"
        )


def _static_bases() -> list[Model]:
    return [
        Model(name, upstream, vision=vision, guest=guest, created=created, effort=effort)
        for name, upstream, guest, vision, created, effort in FAMILY
    ]


STATIC = ModelTable.of(_static_bases())
MODELS: dict[str, Model] = STATIC.rows


@dataclass(frozen=True, slots=True)
class LiveModel:
    """One model as the upstream lists it now, with the tiers whose list showed it."""

    upstream: str
    name: str = ""
    active: bool = True
    hidden: bool = False
    capabilities: dict[str, bool] = field(default_factory=dict)
    tiers: frozenset[str] = frozenset()  # "guest", "user"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def merge(live: Iterable[LiveModel], listed_tiers: frozenset[str]) -> ModelTable:
    """The static table brought up to date by the live list. ``listed_tiers``: the tiers
    whose list was read (a model missing from the guest list needs a user token only if the
    guest list was read at all).

    - a static row the upstream marks inactive or hidden is gone (not listed, a 404);
    - a static row the upstream does not list stays (names users already use keep working);
    - a live model the table lacks is added under its display name (else its id), with its
      upstream id as an alias;
    - capabilities become fields: ``vision``, ``reasoning_effort`` (effort), ``think`` and
      ``web_search`` (whether -Thinking/-Search exist); a flag the upstream does not state
      keeps the static value.
    """
    by_id = {row.upstream.lower(): row for row in live}
    bases: list[Model] = []
    aliases: dict[str, Model] = {}
    taken: set[str] = set()
    for base in _static_bases():
        row = by_id.pop(base.upstream.lower(), None)
        if row is not None and (not row.active or row.hidden):
            continue
        bases.append(_updated(base, row, listed_tiers) if row is not None else base)
        taken.add(base.id.lower())
    for row in by_id.values():
        if not row.active or row.hidden:
            continue
        name = row.name if _NAME.match(row.name) and row.name.lower() not in taken else row.upstream
        if name.lower() in taken or not _NAME.match(name):
            continue
        taken.add(name.lower())
        base = _updated(Model(name, row.upstream, guest=False), row, listed_tiers)
        bases.append(base)
        aliases[row.upstream] = base
    return ModelTable.of(bases, aliases)


def _updated(base: Model, row: LiveModel, listed_tiers: frozenset[str]) -> Model:
    caps = row.capabilities
    guest = ("guest" in row.tiers) if "guest" in listed_tiers else base.guest
    return replace(
        base,
        guest=guest,
        vision=caps.get("vision", base.vision),
        effort=caps.get("reasoning_effort", base.effort),
        can_think=caps.get("think", base.can_think),
        can_search=caps.get("web_search", base.can_search),
    )


def capabilities(model: Model) -> dict[str, bool | list[str]]:
    """What ``/v1/models`` says a row can do: its capabilities as fields."""
    return {
        "vision": model.vision,
        "thinking": model.can_think,
        "search": model.can_search,
        "reasoning_effort": ["high", "max"] if model.effort else [],
    }


def find_model(name: str, claude: dict[str, str] | None = None) -> Model | None:
    """``STATIC.find``: the table built into this release (settings are checked against it)."""
    return STATIC.find(name, claude)


def require_model(
    name: str, claude: dict[str, str] | None = None, table: ModelTable = STATIC
) -> Model:
    return table.require(name, claude)
