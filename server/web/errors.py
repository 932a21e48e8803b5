"""Error bodies and decoding errors that every route shares, whichever API it speaks.

Owns ``error_body``, the default error shape (``{"error": {"message", "type", "param",
"code"}}``, which is also OpenAI's), used by routes that belong to no face (admin, health),
``validation_error``, which turns msgspec's message into the field name clients know, and
``decode_json``, every route's body decoder: a 400 naming the problem for malformed JSON,
invalid UTF-8 (without echoing the bytes) and nesting deeper than ``MAX_DEPTH``.
"""

import itertools
import re
from collections.abc import Callable
from typing import TypeVar

import msgspec

from server.core.errors import GatewayError

__all__ = ["MAX_DEPTH", "decode_json", "error_body", "validation_error"]

T = TypeVar("T")
MAX_DEPTH = 64  # JSON Schemas and metadata nest a few levels; 64 is far beyond any real one

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


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of ``body`` nest (brackets inside strings not counted).
    Linear, in C but for one step per bracket, and only when there are enough brackets."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return 0
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET).translate(_STEP)
    return max(itertools.accumulate(step - 1 for step in brackets), default=0)


def _bad_byte(body: bytes, found: UnicodeDecodeError) -> tuple[int, int]:
    """(the byte, its position in ``body``): msgspec's error counts from the start of the
    string value it was reading, so the whole body is decoded again to say where."""
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        found = exc
    return found.object[found.start], found.start


def decode_json(body: bytes, decode: Callable[[bytes], T]) -> T:
    """``decode(body)``, every failure a ``GatewayError`` (400) that names the problem.
    Depth is checked first: msgspec recurses, and deep values would also recurse later."""
    if json_depth(body) > MAX_DEPTH:
        raise GatewayError("invalid_json", f"it nests deeper than {MAX_DEPTH} levels")
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise GatewayError("invalid_json", str(exc).removeprefix("JSON is malformed: ")) from None
    except UnicodeDecodeError as exc:
        # Name the byte and where it is, never the text around it (a log must not hold it).
        bad, at = _bad_byte(body, exc)
        where = f"byte 0x{bad:02x} at position {at}"
        raise GatewayError("invalid_json", f"it is not valid UTF-8 ({where})") from None
    except RecursionError:
        raise GatewayError("invalid_json", "it nests too deeply") from None
