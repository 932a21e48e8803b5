"""The model table: which names clients may ask for and what each means upstream.

Owns ``MODELS`` and ``find_model``. ``FAMILY`` has one row per upstream model (adding a model
is one row); ``VARIANTS`` turns each row into the exposed names: the plain name, ``-Thinking``
(upstream ``enable_thinking``) and ``-Search`` (upstream web search). Thinking and search are
feature flags upstream, not separate model ids (PROTOCOL.md section 2). ``guest`` says whether
guest (anonymous) tokens may use it: since 2026-05 the GLM-5 family needs a user token.
Names are matched case-insensitively, as users type them every which way; the Anthropic
face also maps Claude model names to rows chosen by settings (``CLAUDE_*_MODEL``).
"""

from dataclasses import dataclass, replace

from server.core.errors import GatewayError, shown

__all__ = ["MODELS", "Model", "find_model", "require_model"]


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

# suffix, field overrides
VARIANTS: list[tuple[str, dict[str, bool]]] = [
    ("", {}),
    ("-Thinking", {"thinking": True}),
    ("-Search", {"search": True}),
]


def _expand() -> dict[str, Model]:
    table: dict[str, Model] = {}
    for name, upstream, guest, vision, created, effort in FAMILY:
        base = Model(name, upstream, vision=vision, guest=guest, created=created, effort=effort)
        for suffix, overrides in VARIANTS:
            model = replace(base, id=name + suffix, **overrides)
            table[model.id.lower()] = model
    return table


MODELS: dict[str, Model] = _expand()


CLAUDE_FAMILIES = ("opus", "sonnet", "haiku")


def find_model(name: str, claude: dict[str, str] | None = None) -> Model | None:
    """The row for ``name``; with ``claude`` (family -> row name, from settings), Claude
    names (``claude-sonnet-4-5``, ``claude-3-5-haiku-latest``...) map to their family's row."""
    found = MODELS.get(name.lower())
    if found is not None or claude is None or not name.lower().startswith("claude"):
        return found
    family = next((f for f in CLAUDE_FAMILIES if f in name.lower()), "sonnet")
    return MODELS.get(claude[family].lower())


def require_model(name: str, claude: dict[str, str] | None = None) -> Model:
    """The row for ``name``, or a 404 that lists what exists (and, for the Anthropic face,
    says Claude names work)."""
    found = find_model(name, claude)
    if found is not None:
        return found
    names = ", ".join(m.id for m in MODELS.values())
    hint = "use a Claude model name (claude-opus-*, claude-sonnet-*, claude-haiku-*) or one of"
    listing = f"{hint}: {names}" if claude is not None else f"available models: {names}"
    raise GatewayError(
        "model_not_found", f"the model '{shown(name)}' does not exist; {listing}", param="model"
    )
