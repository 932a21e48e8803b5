"""Wire shapes of the upstream's SSE frames, decoded once with msgspec.

Owns the ``Frame`` Structs and ``decode_frame``. Every frame is ``{"type": "chat:completion",
"data": {...}}``; ``data`` carries a ``phase`` and some of: ``delta_content`` (append),
``edit_index``/``edit_content`` (truncate then append), ``content`` (the whole text, a
snapshot), ``usage``, ``done``, an in-band
``error`` (often duplicated under ``data.data.error``), and the 2026 site-tool fields
(``delta_name``, ``delta_arguments``, ``tool_name``). Unknown fields are ignored, so new
upstream keys do not break decoding; a stray ``[DONE]`` (bare or as ``{"data": "[DONE]"}``)
decodes to a done frame. A frame whose JSON holds half of a surrogate pair (``"\\ud83d"``, as
JavaScript's ``JSON.stringify`` writes a string cut inside an emoji) is read by the standard
library instead of being dropped; the text model repairs or replaces the half.
"""

import json
import re
from typing import Any

import msgspec

__all__ = ["DONE", "FrameData", "UpstreamError", "UpstreamUsage", "decode_frame"]


class UpstreamUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    # A continued chat's history the upstream read from its cache (PROTOCOL.md section 6.4
    # names usage.cached_tokens; OpenAI-style prompt_tokens_details.cached_tokens also read)
    cached_tokens: int | None = None

    @property
    def cached(self) -> int:
        if isinstance(self.cached_tokens, int):
            return self.cached_tokens
        details = self.prompt_tokens_details or {}
        cached = details.get("cached_tokens")
        return cached if isinstance(cached, int) else 0


class UpstreamError(msgspec.Struct):
    code: int | str | None = None
    detail: str | None = None
    content: str | None = None
    error_code: str | None = None
    captcha_error_type: str | None = None


class _Nested(msgspec.Struct):
    error: UpstreamError | None = None


class FrameData(msgspec.Struct):
    phase: str | None = None
    delta_content: str | None = None
    edit_index: int | None = None
    edit_content: str | None = None
    content: str | None = None
    usage: UpstreamUsage | None = None
    done: bool = False
    error: UpstreamError | None = None
    data: _Nested | str | None = None
    delta_name: str | None = None
    delta_arguments: str | None = None
    tool_name: str | None = None

    @property
    def failure(self) -> UpstreamError | None:
        if self.error is not None:
            return self.error
        return self.data.error if isinstance(self.data, _Nested) else None

    @property
    def is_done(self) -> bool:
        return self.done or self.phase == "done" or self.data == "[DONE]"


class _Envelope(msgspec.Struct):
    type: str | None = None
    data: FrameData | str | None = None


DONE = FrameData(phase="done", done=True)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_decoder = msgspec.json.Decoder(_Envelope)


def decode_frame(payload: bytes) -> FrameData | None:
    """Decode one SSE ``data`` payload; ``None`` for a frame that says nothing.

    Raises ``msgspec.DecodeError`` for a payload that is not a frame at all.
    """
    if payload == b"[DONE]":
        return DONE
    try:
        envelope = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        # msgspec calls a lone high half before a closing quote "truncated" input, not a
        # surrogate error, so the payload itself is what says whether a half is there.
        if not _SURROGATE_ESCAPE.search(payload):
            raise
        try:
            envelope = msgspec.convert(json.loads(payload), _Envelope)
        except ValueError:
            raise exc from None
    if isinstance(envelope.data, FrameData):
        return envelope.data
    return DONE if envelope.data == "[DONE]" else None
