"""Vision input: the checks on the images a client sent, and reading them into bytes.

Owns ``check_images`` (the early answers, before a key is charged or a token taken: a model
without vision, a gateway with no user token to upload with, more images than
``IMAGE_MAX_COUNT``; each a 400 naming the field) and ``gather`` (every image read into
bytes: a ``data:`` URL decoded, an http(s) URL fetched from its host with ``IMAGE_MAX_BYTES``
and ``IMAGE_FETCH_TIMEOUT``, a host on a private, loopback or link-local address refused
unless ``IMAGE_FETCH_PRIVATE``; an image over the byte cap is a 413; the media type is read
from the bytes, never trusted from the client). Remote images are fetched here rather than
passed on because the upstream takes only files uploaded to it (PROTOCOL.md section 6.9);
they are fetched directly, not by an egress route: that is the client's host, not chat.z.ai,
and its WAF and pacing do not concern it.
"""

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

from server.core.chat import Conversation, Image
from server.core.errors import GatewayError
from server.core.models import ModelTable
from server.transport import Timeouts, TransportError, open_stream

__all__ = ["check_images", "gather", "media_type_of"]

# Leading bytes -> media type: the formats the page uploads (PNG, JPEG, GIF, WebP, BMP).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"BM", 0, "image/bmp"),
)
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
}


def media_type_of(data: bytes) -> str:
    """The image format the bytes say, or "" when they are none the upstream takes."""
    for magic, at, kind in _MAGIC:
        if data[at : at + len(magic)] == magic:
            if kind == "image/webp" and not data.startswith(b"RIFF"):
                continue
            return kind
    return ""


def extension(media_type: str) -> str:
    return _EXTENSIONS.get(media_type, "png")


def _bad(message: str, param: str, kind: str = "invalid_request") -> GatewayError:
    return GatewayError(kind, message, param=param)


def check_images(conv: Conversation, table: ModelTable, max_count: int, user_tokens: bool) -> None:
    """The answers that need no byte of the images: raised before anything is spent."""
    images = conv.images
    if not images:
        return
    first = images[0].param
    if not conv.model.vision:
        vision = ", ".join(m.id for m in table.listed if m.vision and m.id == _plain(m.id))
        raise _bad(
            f"{first}: model {conv.model.id} does not take images; models with vision:"
            f" {vision or 'none listed'}",
            first,
        )
    if not user_tokens:
        raise _bad(
            f"{first}: images are uploaded to Z.AI with a user token, and this gateway has"
            " only guest tokens (anonymous mode): configure user tokens (ZAI_TOKENS,"
            " AUTH_TOKENS_FILE or the admin API) to send images",
            first,
        )
    if len(images) > max_count:
        extra = images[max_count].param
        raise _bad(
            f"{extra}: at most {max_count} images per request (IMAGE_MAX_COUNT), got {len(images)}",
            extra,
        )


def _plain(name: str) -> str:
    for suffix in ("-Thinking", "-Search"):
        name = name.removesuffix(suffix)
    return name


async def gather(conv: Conversation, max_bytes: int, timeout: float, private: bool = False) -> None:
    """Read every image of ``conv`` into bytes (remote ones fetched at the same time)."""
    pending = [image for image in conv.images if not image.data]
    if pending:
        await asyncio.gather(*(_read(image, max_bytes, timeout, private) for image in pending))


async def _read(image: Image, max_bytes: int, timeout: float, private: bool) -> None:
    source, where = image.source, image.param
    if source.startswith("data:"):
        data = _decode_data_url(source, where, max_bytes)
    elif source.startswith(("http://", "https://")):
        data = await _fetch(source, where, max_bytes, timeout, private)
    else:
        raise _bad(f"{where}: an image URL must be a data: URL or an http(s) URL", where)
    kind = media_type_of(data)
    if not kind:
        raise _bad(
            f"{where}: not an image in a format the upstream takes (PNG, JPEG, GIF, WebP or BMP)",
            where,
        )
    image.data, image.media_type, image.source = data, kind, ""
    image.digest = hashlib.sha256(data).hexdigest()


def _too_large(where: str, max_bytes: int) -> GatewayError:
    return _bad(
        f"{where}: the image is larger than IMAGE_MAX_BYTES ({max_bytes} bytes)",
        where,
        "payload_too_large",
    )


def _decode_data_url(source: str, where: str, max_bytes: int) -> bytes:
    head, comma, payload = source.partition(",")
    if not comma or not head.endswith(";base64"):
        raise _bad(f"{where}: a data: URL must be base64 (data:image/png;base64,...)", where)
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise _too_large(where, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where}: the data: URL is not valid base64", where) from None
    if len(data) > max_bytes:
        raise _too_large(where, max_bytes)
    return data


async def _fetch(url: str, where: str, max_bytes: int, timeout: float, private: bool) -> bytes:
    """GET the image, following up to ``_REDIRECTS`` redirects (each target checked)."""
    try:
        return await asyncio.wait_for(_follow(url, where, max_bytes, timeout, private), timeout)
    except TimeoutError:
        raise _bad(
            f"{where}: fetching the image took longer than IMAGE_FETCH_TIMEOUT ({timeout:g} s)",
            where,
        ) from None


_REDIRECTS = 3


async def _follow(url: str, where: str, max_bytes: int, timeout: float, private: bool) -> bytes:
    limits = Timeouts(connect=timeout, headers=timeout, idle=timeout)
    headers = {"Accept": "image/*", "User-Agent": "zai-gateway (image fetch)"}
    for _ in range(_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad(f"{where}: the image URL is not an http(s) URL with a host", where)
        if not private and await _is_private(parts.hostname):
            raise _bad(
                f"{where}: the image URL's host is a private, loopback or link-local address;"
                " the gateway does not fetch from those (IMAGE_FETCH_PRIVATE=true allows it)",
                where,
            )
        try:
            exchange = await open_stream("GET", url, headers, None, limits)
        except (TransportError, OSError, ValueError) as exc:
            raise _bad(f"{where}: could not fetch the image: {exc}", where) from None
        try:
            location = exchange.headers.get("location", "")
            if exchange.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            if exchange.status != 200:
                raise _bad(f"{where}: fetching the image answered HTTP {exchange.status}", where)
            try:
                data = await exchange.read_all(max_bytes + 1)
            except TransportError as exc:
                raise _bad(f"{where}: could not fetch the image: {exc}", where) from None
        finally:
            exchange.close()
        if len(data) > max_bytes:
            raise _too_large(where, max_bytes)
        return data
    raise _bad(f"{where}: the image URL redirected more than {_REDIRECTS} times", where)


async def _is_private(host: str) -> bool:
    """Whether ``host`` is, or resolves to, an address no public image lives at."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return False  # the fetch reports that it cannot reach the host
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    return any(not address.is_global for address in addresses)
