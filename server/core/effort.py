"""Reasoning effort: what a client's effort means upstream, as tables.

Owns ``LEVELS`` (a client's effort level -> the upstream's ``features.reasoning_effort``),
``from_budget`` (Anthropic ``thinking.budget_tokens`` -> a level) and ``upstream_effort``.
The upstream knows two levels, ``high`` and ``max``, and only models whose capabilities say
``reasoning_effort`` take the field (GLM-5.2/5.3; sending it elsewhere misbehaves,
PROTOCOL.md section 6.6). So on such a model an effort turns thinking on and picks a level;
on any other it only switches thinking (``none``/``minimal`` off, anything else on).
OpenAI's ``reasoning_effort`` and Anthropic's ``output_config.effort`` share the names.
"""

__all__ = ["BUDGET_LEVELS", "LEVELS", "from_budget", "thinking_for", "upstream_effort"]

# client level -> upstream reasoning_effort (None: the level turns thinking off).
# The upstream has nothing below "high": low and medium get its lowest level.
LEVELS: dict[str, str | None] = {
    "none": None,
    "minimal": None,
    "low": "high",
    "medium": "high",
    "high": "high",
    "xhigh": "max",
    "max": "max",
}

# Anthropic thinking budgets, smallest first: (budget_tokens at least, client level).
# Claude Code asks ~4k for "think", ~10k for "think hard" and ~32k for "ultrathink".
BUDGET_LEVELS: tuple[tuple[int, str], ...] = ((0, "high"), (16_000, "max"))


def from_budget(budget_tokens: int) -> str:
    """The client level an Anthropic thinking budget stands for."""
    level = BUDGET_LEVELS[0][1]
    for floor, name in BUDGET_LEVELS:
        if budget_tokens >= floor:
            level = name
    return level


def thinking_for(level: str) -> bool:
    """Whether a client level switches thinking on (unknown levels do: they ask for some)."""
    return LEVELS.get(level, "high") is not None


def upstream_effort(level: str | None, model_takes_effort: bool) -> str | None:
    """The ``features.reasoning_effort`` to send, or None to send none."""
    if level is None or not model_takes_effort:
        return None
    return LEVELS.get(level)
