"""The v2 completion request, built exactly as the chat.z.ai web page builds it.

Owns ``build_completion`` (and ``build_new_chat``, the page's chat creation): query string
(the signed fields plus the browser fingerprint the page sends), headers (``X-FE-Version``,
``X-Signature``, Origin/Referer, device id) and JSON body (flattened history,
``signature_prompt``, feature flags, template variables). A captcha param, when given, goes in
the body as ``captcha_verify_param``. Pure: the clock and ids come in as arguments, so a test
can pin every byte.
"""

import functools
import hashlib
import re
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import msgspec

from server.core.chat import Conversation, Image
from server.ids import uuid4_text
from server.zai.endpoints import Endpoints
from server.zai.files import file_entry, image_parts
from server.zai.identity import Credential
from server.zai.signature import sign

__all__ = [
    "COMPLETIONS_PATH",
    "Dialect",
    "UpstreamRequest",
    "browser_headers",
    "build_completion",
    "build_new_chat",
]

DEFAULT_PATHS = Endpoints()
COMPLETIONS_PATH = DEFAULT_PATHS.completions  # the default; a dialect's own is ``paths``

_ROLE = {"system": "system", "user": "user", "assistant": "assistant"}
# ZAI_HISTORY=fold: the whole conversation as ONE user message, each turn a labelled section
# (the upstream reportedly takes only role "user" now, PROTOCOL.md section 6.7).
_FOLD_TAG = {"system": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    chat_id: str


@dataclass(frozen=True, slots=True)
class Dialect:
    """The moving values of the upstream, taken from settings."""

    base_url: str
    signature_key: str
    user_agent: str
    history: str = "messages"  # or "fold": the whole history as one user message
    # Each fresh chat is created first (POST /api/v1/chats/new, as the page does) and the
    # completion names the id it answered; off, the completion names a new id of its own.
    create_chats: bool = False
    # What the page's browser says of itself on every call (empty: not sent); origin ""
    # is the base URL, referer "" the page the call is made from.
    origin: str = ""
    referer: str = ""
    sec_ch_ua: str = ""
    sec_ch_ua_mobile: str = ""
    sec_ch_ua_platform: str = ""
    accept_language: str = "en-US,en;q=0.9"
    paths: Endpoints = DEFAULT_PATHS


def browser_headers(dialect: Dialect, page: str = "") -> dict[str, str]:
    """The headers Chrome adds to the page's own ``fetch()`` calls, in its order: client
    hints, User-Agent, Origin, the fetch metadata of a same-origin request, Referer (``page``,
    else the home page) and Accept-Language; a setting left empty is not sent.

    >>> d = Dialect("https://chat.z.ai", "k", "UA", sec_ch_ua_mobile="?0")
    >>> list(browser_headers(d))[:3], browser_headers(d)["Referer"]
    (['sec-ch-ua-mobile', 'User-Agent', 'Origin'], 'https://chat.z.ai/')
    """
    origin = dialect.origin or dialect.base_url
    pairs = (
        ("sec-ch-ua", dialect.sec_ch_ua),
        ("sec-ch-ua-mobile", dialect.sec_ch_ua_mobile),
        ("sec-ch-ua-platform", dialect.sec_ch_ua_platform),
        ("User-Agent", dialect.user_agent),
        ("Origin", origin),
        ("Sec-Fetch-Site", "same-origin"),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Dest", "empty"),
        ("Referer", dialect.referer or page or f"{origin}/"),
        ("Accept-Language", dialect.accept_language),
    )
    return {name: value for name, value in pairs if value}


def build_completion(
    dialect: Dialect,
    cred: Credential,
    conv: Conversation,
    fe_version: str,
    now_ms: int | None = None,
    request_id: str | None = None,
    chat_id: str | None = None,
    captcha: str = "",
    files: dict[str, dict[str, Any]] | None = None,
    parent_id: str | None = None,
    message_id: str | None = None,
) -> UpstreamRequest:
    """``files``: the uploaded file object of each image of ``conv``, by its digest.
    ``parent_id``: the assistant message a continued chat's new turn follows (``conv`` then
    holds only the new turns: the upstream keeps the rest); ``message_id``: the id the
    answer's message gets (the body's ``id``), what the next turn names as its parent."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    request_id = request_id or uuid4_text()
    chat_id = chat_id or uuid4_text()
    prompt = conv.prompt
    base = dialect.base_url
    page = f"{base}/c/{chat_id}"
    clock = _clock(now_ms // 1000)
    stamp = clock.stamp
    chat = _quote(chat_id)
    query = _query(
        dialect,
        (  # as _VALUES names them
            str(now_ms),
            _quote(request_id),
            _quote(cred.user_id),
            _quote(cred.token),
            _quoted_chat_prefix(base) + chat,
            "%2Fc%2F" + chat,
            f"{clock.local_time}.{now_ms % 1000:03d}Z",
            clock.utc_time,
            str(now_ms),
        ),
    )
    headers = {
        "Authorization": f"Bearer {cred.token}",
        "X-FE-Version": fe_version,
        "X-Signature": sign(dialect.signature_key, request_id, now_ms, cred.user_id, prompt),
        "X-Region": "overseas",
        "X-Device-Id": "uid_" + hashlib.sha256(cred.user_id.encode()).hexdigest()[:16],
        "Content-Type": "application/json",
        "Accept": "*/*",
        **browser_headers(dialect, page),
    }
    user_message_id = uuid4_text()
    body = {
        "stream": True,
        "model": conv.model.upstream,
        "messages": _messages(conv, dialect.history, files or {}),
        "signature_prompt": prompt,
        "params": _params(conv),
        "extra": {},
        "features": _features(conv),
        "variables": {
            "{{USER_NAME}}": cred.name,
            "{{USER_LOCATION}}": "Unknown",
            "{{CURRENT_DATETIME}}": stamp,
            "{{CURRENT_DATE}}": stamp[:10],
            "{{CURRENT_TIME}}": stamp[11:],
            "{{CURRENT_WEEKDAY}}": clock.weekday,
            "{{CURRENT_TIMEZONE}}": "UTC",
            "{{USER_LANGUAGE}}": "en-US",
        },
        "chat_id": chat_id,
        "id": message_id or uuid4_text(),
        "current_user_message_id": user_message_id,
        "current_user_message_parent_id": parent_id,
        "background_tasks": {"title_generation": False, "tags_generation": False},
        "mcp_servers": [],
        "files": [
            file_entry(file, user_message_id, dialect.paths.files)
            for file in (files or {}).values()
        ],
    }
    if captcha:
        body["captcha_verify_param"] = captcha  # single-use (PROTOCOL.md section 6.2)
    url = f"{base}{dialect.paths.completions}?{query}"
    return UpstreamRequest(url, headers, msgspec.json.encode(body), chat_id)


def build_new_chat(conv: Conversation, now_ms: int | None = None) -> bytes:
    """The body of ``POST /api/v1/chats/new`` as the page sends it (PROTOCOL.md section 6.4):
    the chat's first user message (the prompt) in its history, the model and the features
    the completion will ask for. The answer's ``id`` is the chat id."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    uid, features = uuid4_text(), _features(conv)
    message = {
        "id": uid,
        "parentId": None,
        "childrenIds": [],
        "role": "user",
        "content": conv.prompt,
        "timestamp": now_ms // 1000,
        "models": [conv.model.upstream],
    }
    chat = {
        "id": "",
        "title": conv.prompt[:40] or "New Chat",
        "models": [conv.model.upstream],
        "params": {},
        "history": {"messages": {uid: message}, "currentId": uid},
        "tags": [],
        "flags": [],
        "features": [{"server": "tool_selector_h", "status": "hidden", "type": "tool_selector"}],
        "mcp_servers": [],
        "enable_thinking": features["enable_thinking"],
        "auto_web_search": features["auto_web_search"],
        "message_version": 1,
        "extra": {},
        "timestamp": now_ms,
        "type": "default",
    }
    if "reasoning_effort" in features:
        chat["reasoning_effort"] = features["reasoning_effort"]
    return msgspec.json.encode({"chat": chat})


_PER_REQUEST = "\x00"  # marks a query value that changes with every request


def _fingerprint(base: str, user_agent: str) -> dict[str, object]:
    """The query the web page sends, in its order: the signed fields and what its browser
    says about itself."""
    parts = urlsplit(base)
    return {
        "timestamp": _PER_REQUEST,
        "requestId": _PER_REQUEST,
        "user_id": _PER_REQUEST,
        "version": "0.0.1",
        "platform": "web",
        "token": _PER_REQUEST,
        "user_agent": user_agent,
        "language": "en-US",
        "languages": "en-US,en",
        "timezone": "UTC",
        "cookie_enabled": "true",
        "screen_width": 1920,
        "screen_height": 1080,
        "screen_resolution": "1920x1080",
        "viewport_height": 945,
        "viewport_width": 1920,
        "viewport_size": "1920x945",
        "color_depth": 24,
        "pixel_ratio": 1,
        "current_url": _PER_REQUEST,
        "pathname": _PER_REQUEST,
        "search": "",
        "hash": "",
        "host": parts.netloc,
        "hostname": parts.hostname or "",
        "protocol": parts.scheme + ":",
        "referrer": "",
        "title": "Z.ai Chat - Free AI powered by GLM",
        "timezone_offset": 0,
        "local_time": _PER_REQUEST,
        "utc_time": _PER_REQUEST,
        "is_mobile": "false",
        "is_touch": "false",
        "max_touch_points": 0,
        "browser_name": "Chrome",
        "os_name": "Windows",
        "signature_timestamp": _PER_REQUEST,
    }


# The per-request values of the query, in the order ``_fingerprint`` has them.
_VALUES = (
    "timestamp",
    "requestId",
    "user_id",
    "token",
    "current_url",
    "pathname",
    "local_time",
    "utc_time",
    "signature_timestamp",
)


@functools.cache
def _query_template(base: str, user_agent: str) -> tuple[str, ...]:
    """The encoded query cut around its per-request values (encoding all of it per request
    was a tenth of the gateway's CPU)."""
    fields = _fingerprint(base, user_agent)
    names = tuple(name for name, value in fields.items() if value is _PER_REQUEST)
    if names != _VALUES:  # the page's order changed in one place and not the other
        raise RuntimeError(f"the query's per-request fields are {names}, not {_VALUES}")
    return tuple(urlencode(fields).split(quote_plus(_PER_REQUEST)))


# What urlencode leaves as it is; what it makes of every other ASCII character, as one
# str.translate table; and a quick test for a value that needs the table at all.
_SAFE_IN_QUERY = string.ascii_letters + string.digits + "_.-~"
_ENCODED = {c: f"%{c:02X}" for c in range(128) if chr(c) not in _SAFE_IN_QUERY}
_ENCODED[ord(" ")] = "+"
_NEEDS_ENCODING = re.compile(f"[^{re.escape(_SAFE_IN_QUERY)}]")


def _quote(value: str) -> str:
    if _NEEDS_ENCODING.search(value) is None:
        return value  # ids and numbers, most of them
    return value.translate(_ENCODED) if value.isascii() else quote_plus(value)


@functools.cache
def _quoted_chat_prefix(base: str) -> str:
    """``current_url`` up to the chat id, encoded (the same for every request)."""
    return _quote(f"{base}/c/")


@dataclass(frozen=True, slots=True)
class _Clock:
    """What the request says of the time, for one second: made once, not per request."""

    second: int
    stamp: str  # "2026-12-03 19:33:52", the template variables' form
    local_time: str  # the query's local_time up to its milliseconds, encoded
    utc_time: str  # the query's utc_time, encoded
    weekday: str


_last_clock = _Clock(-1, "", "", "", "")


def _clock(second: int) -> _Clock:
    global _last_clock
    if _last_clock.second != second:
        when = datetime.fromtimestamp(second, UTC)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S")
        _last_clock = _Clock(
            second,
            stamp,
            _quote(f"{stamp[:10]}T{stamp[11:]}"),
            _quote(when.strftime("%a, %d %b %Y %H:%M:%S GMT")),
            when.strftime("%A"),
        )
    return _last_clock


def _query(dialect: Dialect, values: tuple[str, ...]) -> str:
    """The query with the per-request ``values``, each encoded already, as ``_VALUES``
    names them."""
    pieces = _query_template(dialect.base_url, dialect.user_agent)
    out = [pieces[0]]
    for value, piece in zip(values, pieces[1:], strict=True):
        out += (value, piece)
    return "".join(out)


def _messages(
    conv: Conversation, history: str, files: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    if history == "fold" and [turn.role for turn in conv.turns] != ["user"]:
        return [{"role": "user", "content": _content(fold(conv), conv.images, files)}]
    return [
        {"role": _ROLE[turn.role], "content": _content(turn.text, turn.images, files)}
        for turn in conv.turns
    ]


def _content(
    text: str, images: list[Image], files: dict[str, dict[str, Any]]
) -> str | list[dict[str, Any]]:
    """A message's text, or with images its parts: the text and a reference to each file."""
    if not images:
        return text
    return image_parts(text, [files[image.digest]["id"] for image in images])


def fold(conv: Conversation) -> str:
    """The conversation as one text: each turn in a section tagged with its role, oldest
    first, so the last section is the message to answer. Tags, like the tool protocol's, are
    rarer in real text than markdown headings."""
    return "\n\n".join(
        f"<{_FOLD_TAG[turn.role]}>\n{turn.text}\n</{_FOLD_TAG[turn.role]}>" for turn in conv.turns
    )


def _features(conv: Conversation) -> dict[str, object]:
    # Search: a -Search model, or a client's web search server tool (conv.search).
    # Only auto_web_search switches search on (web_search is mirrored back and does
    # nothing); with the caller's tools search stays off, else the model answers with the
    # site's own tool markers. reasoning_effort only where the model takes it (6.6).
    features: dict[str, object] = {
        "image_generation": False,
        "web_search": False,
        "auto_web_search": (conv.model.search or conv.search) and not conv.tools,
        "preview_mode": True,
        "flags": [],
        "enable_thinking": conv.wants_thinking,
        "vlm_tools_enable": False,
        "vlm_web_search_enable": False,
        "vlm_website_mode": False,
    }
    effort = conv.upstream_effort
    if effort is not None:
        features["reasoning_effort"] = effort
    return features


def _params(conv: Conversation) -> dict[str, float | int]:
    params: dict[str, float | int] = {}
    if conv.temperature is not None:
        params["temperature"] = conv.temperature
    if conv.top_p is not None:
        params["top_p"] = conv.top_p
    if conv.max_tokens is not None:
        params["max_tokens"] = conv.max_tokens
    return params
