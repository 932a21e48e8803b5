"""The solver sidecar's wire contract, shared by the gateway's client and the reference helper.

Owns ``SolveAsk`` (what the gateway POSTs to ``CAPTCHA_URL``), ``SolveAnswer`` (what a sidecar
answers with 200) and ``SolveRefusal`` (any other status: ``{"error": {"message": ...}}``, the
message in plain words, never holding a param). A param is single-use and lives
``expires_in`` seconds from the answer.
"""

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["SolveAnswer", "SolveAsk", "SolveRefusal", "refusal"]


class SolveAsk(msgspec.Struct):
    scene: str = ""  # the Aliyun Captcha V3 scene id (CAPTCHA_SCENE)
    region: str = ""  # the Aliyun region (CAPTCHA_REGION): sgp or cn


class SolveAnswer(msgspec.Struct):
    param: Annotated[str, Meta(min_length=1, max_length=8192)]
    expires_in: Annotated[float, Meta(gt=0)] = 75.0


class _Message(msgspec.Struct):
    message: str = ""


class SolveRefusal(msgspec.Struct):
    error: _Message = msgspec.field(default_factory=_Message)


def refusal(message: str) -> bytes:
    """A sidecar's error body.

    >>> refusal("timed out")
    b'{"error":{"message":"timed out"}}'
    """
    return msgspec.json.encode(SolveRefusal(_Message(message)))
