"""Error bodies and decoding errors that every route shares, whichever API it speaks.

Owns ``error_body``, the default error shape (``{"error": {"message", "type", "param",
"code"}}``, which is also OpenAI's), used by routes that belong to no face (admin, health),
and ``validation_error``, which turns msgspec's message into the field name clients know.
"""

import re

import msgspec

from server.core.errors import GatewayError

__all__ = ["error_body", "validation_error"]

_encode = msgspec.json.encode
_PATH = re.compile(r" - at `\$\.?([^`]*)`")


def error_body(err: GatewayError) -> bytes:
    error = {"message": err.message, "type": err.rule.type, "param": err.param, "code": err.kind}
    return _encode({"error": error})


def validation_error(exc: msgspec.ValidationError) -> GatewayError:
    """msgspec's message, with the JSON path turned into the field name clients know."""
    text = str(exc)
    found = _PATH.search(text)
    param = found[1] if found else None
    if param is None and "missing required field" in text:
        param = text.split("`")[1] if "`" in text else None
    message = _PATH.sub("", text)
    if param:
        message = f"invalid field '{param}': {message}"
    return GatewayError("invalid_request", message, param=param)
