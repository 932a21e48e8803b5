"""Who is calling, what their key's limits say, and what the call used.

Owns ``Caller`` (the key a request is counted under: an issued key's id and name,
``AUTH_TOKEN(S)`` as ``env-<8 hex>`` ids, or ``anonymous`` under ``SKIP_AUTH_TOKEN``),
``static_callers``, ``rate_headers`` (OpenAI's ``x-ratelimit-*`` names) and ``Metered``, the
sink wrapper that notes the tokens a completion used, for settling the reservation and for the
usage counters (``server.core.admission`` says what a refusal is).
"""

import hashlib
from dataclasses import dataclass
from typing import Any

from server.core.chat import Conversation, Ending, Sink, ToolCall, WebSearch
from server.core.errors import GatewayError
from server.core.token_estimate import estimate_answer, estimate_conversation
from state.client_keys import Admission

__all__ = ["ANONYMOUS", "Caller", "Metered", "rate_headers", "static_callers"]


@dataclass(slots=True)
class Caller:
    id: str
    name: str
    admission: Admission | None = None  # issued keys: what the last admit said


ANONYMOUS = Caller("anonymous", "anonymous")


def static_callers(keys: tuple[str, ...]) -> list[Caller]:
    """One caller per configured key, in order; ids are safe to show (a digest's prefix)."""
    names = ["AUTH_TOKEN" if len(keys) == 1 else f"AUTH_TOKENS[{i}]" for i in range(len(keys))]
    return [
        Caller("env-" + hashlib.sha256(key.encode()).hexdigest()[:8], name)
        for key, name in zip(keys, names, strict=True)
    ]


def duration(seconds: float) -> str:
    """OpenAI's way of writing a reset time.

    >>> duration(0.25), duration(59), duration(360), duration(3725.5)
    ('250ms', '59s', '6m0s', '1h2m5.5s')
    """
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    hours, rest = divmod(round(seconds, 1), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if minutes or hours:
        text = f"{int(minutes)}m{text}"
    return f"{int(hours)}h{text}" if hours else text


def rate_headers(admission: Admission) -> dict[str, str]:
    out: dict[str, str] = {}
    for lim in admission.limits:
        out[f"x-ratelimit-limit-{lim.kind}"] = str(lim.limit)
        out[f"x-ratelimit-remaining-{lim.kind}"] = str(lim.remaining)
        out[f"x-ratelimit-reset-{lim.kind}"] = duration(lim.reset)
    return out


class Metered:
    """A face's sink that also notes what the completion used: the upstream's usage, or an
    estimate of both sides when the upstream sent none. Everything else goes to ``inner``."""

    def __init__(self, inner: Sink, conv: Conversation) -> None:
        self.inner = inner
        self.conv = conv
        self.input_tokens = 0
        self.output_tokens = 0
        self.failed = False
        self.finish_reason = ""
        self.error = ""  # the failure's kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def delta(self, reasoning: str, content: str) -> None:
        await self.inner.delta(reasoning, content)

    async def tool_call(self, call: ToolCall) -> None:
        await self.inner.tool_call(call)

    async def searched(self, searches: tuple[WebSearch, ...]) -> None:
        await self.inner.searched(searches)

    @property
    def started(self) -> bool:
        return self.inner.started

    @property
    def used(self) -> int:
        return self.input_tokens + self.output_tokens

    async def finish(self, end: Ending) -> None:
        usage = end.usage
        if usage is not None and usage.total_tokens:
            self.input_tokens, self.output_tokens = usage.prompt_tokens, usage.completion_tokens
        else:
            self.input_tokens = estimate_conversation(self.conv)
            self.output_tokens = await estimate_answer(end.reasoning, end.content)
        self.finish_reason = end.reason
        await self.inner.finish(end)

    async def fail(self, error: GatewayError) -> None:
        self.failed = True
        self.error = error.kind
        await self.inner.fail(error)
