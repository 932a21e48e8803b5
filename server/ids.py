"""Identifiers the gateway makes up: request, chat, message, completion and call ids.

Owns ``uuid4_text`` (a version-4 UUID as text, for the ids the upstream expects in that form)
and ``hex_id`` (n random hex digits). They come from ``random.getrandbits`` rather than
``uuid.uuid4``, which reads the kernel's entropy pool on every call: a request makes half a
dozen of them, and the system call was about 5 % of a request's CPU. None of them is a secret
(the upstream, the client and the logs all see them); keys, lock owners and other values that
must not be guessed use ``secrets``. The ``random`` module reseeds itself in a forked worker,
so workers do not repeat each other's ids.

>>> import uuid
>>> uuid.UUID(uuid4_text()).version
4
>>> len(hex_id(12)), hex_id(12) != hex_id(12)
(12, True)
"""

from random import getrandbits

__all__ = ["hex_id", "uuid4_text"]

_VERSION = (0xF000 << 64, 0x4000 << 64)  # the version nibble: 4
_VARIANT = (0xC000 << 48, 0x8000 << 48)  # the variant bits: RFC 4122


def uuid4_text() -> str:
    """A random UUID, version 4, in its usual 8-4-4-4-12 text form."""
    bits = getrandbits(128) & ~_VERSION[0] | _VERSION[1]
    h = f"{bits & ~_VARIANT[0] | _VARIANT[1]:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def hex_id(digits: int) -> str:
    """``digits`` random lowercase hex digits."""
    return f"{getrandbits(4 * digits):0{digits}x}"
