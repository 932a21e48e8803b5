"""The v2 completion request, built exactly as the chat.z.ai web page builds it.

Owns ``build_completion``: query string (the signed fields plus the browser fingerprint the
page sends), headers (``X-FE-Version``, ``X-Signature``, Origin/Referer, device id) and JSON
body (flattened history, ``signature_prompt``, feature flags, template variables). Pure: the
clock and ids come in as arguments, so a test can pin every byte.
"""

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

import msgspec

from server.chat import Conversation
from server.zai.identity import Credential
from server.zai.signature import sign

__all__ = ["COMPLETIONS_PATH", "Dialect", "UpstreamRequest", "build_completion"]

COMPLETIONS_PATH = "/api/v2/chat/completions"

_ROLE = {"system": "system", "user": "user", "assistant": "assistant"}
_FLAT_LABEL = {"system": "System", "user": "User", "assistant": "Assistant"}


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
    history: str = "messages"  # or "flatten": the whole history as one user message


def build_completion(
    dialect: Dialect,
    cred: Credential,
    conv: Conversation,
    fe_version: str,
    now_ms: int | None = None,
    request_id: str | None = None,
    chat_id: str | None = None,
) -> UpstreamRequest:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    request_id = request_id or str(uuid.uuid4())
    chat_id = chat_id or str(uuid.uuid4())
    prompt = conv.prompt
    base = dialect.base_url
    host = urlsplit(base).netloc
    page = f"{base}/c/{chat_id}"
    when = datetime.fromtimestamp(now_ms / 1000, UTC)
    query = {
        "timestamp": now_ms,
        "requestId": request_id,
        "user_id": cred.user_id,
        "version": "0.0.1",
        "platform": "web",
        "token": cred.token,
        "user_agent": dialect.user_agent,
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
        "current_url": page,
        "pathname": f"/c/{chat_id}",
        "search": "",
        "hash": "",
        "host": host,
        "hostname": host.split(":")[0],
        "protocol": urlsplit(base).scheme + ":",
        "referrer": "",
        "title": "Z.ai Chat - Free AI powered by GLM",
        "timezone_offset": 0,
        "local_time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now_ms % 1000:03d}Z",
        "utc_time": when.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "is_mobile": "false",
        "is_touch": "false",
        "max_touch_points": 0,
        "browser_name": "Chrome",
        "os_name": "Windows",
        "signature_timestamp": now_ms,
    }
    headers = {
        "Authorization": f"Bearer {cred.token}",
        "X-FE-Version": fe_version,
        "X-Signature": sign(dialect.signature_key, request_id, now_ms, cred.user_id, prompt),
        "X-Region": "overseas",
        "X-Device-Id": "uid_" + hashlib.sha256(cred.user_id.encode()).hexdigest()[:16],
        "Content-Type": "application/json",
        "Accept": "*/*",
        "Accept-Language": "en-US,en;q=0.9",
        "Origin": base,
        "Referer": page,
        "User-Agent": dialect.user_agent,
    }
    body = {
        "stream": True,
        "model": conv.model.upstream,
        "messages": _messages(conv, dialect.history),
        "signature_prompt": prompt,
        "params": _params(conv),
        "extra": {},
        "features": {
            "image_generation": False,
            "web_search": conv.model.search,
            "auto_web_search": conv.model.search,
            "preview_mode": True,
            "flags": [],
            "enable_thinking": conv.wants_thinking,
            "vlm_tools_enable": False,
            "vlm_web_search_enable": False,
            "vlm_website_mode": False,
        },
        "variables": {
            "{{USER_NAME}}": cred.name,
            "{{USER_LOCATION}}": "Unknown",
            "{{CURRENT_DATETIME}}": when.strftime("%Y-%m-%d %H:%M:%S"),
            "{{CURRENT_DATE}}": when.strftime("%Y-%m-%d"),
            "{{CURRENT_TIME}}": when.strftime("%H:%M:%S"),
            "{{CURRENT_WEEKDAY}}": when.strftime("%A"),
            "{{CURRENT_TIMEZONE}}": "UTC",
            "{{USER_LANGUAGE}}": "en-US",
        },
        "chat_id": chat_id,
        "id": str(uuid.uuid4()),
        "current_user_message_id": str(uuid.uuid4()),
        "current_user_message_parent_id": None,
        "background_tasks": {"title_generation": False, "tags_generation": False},
        "mcp_servers": [],
        "files": [],
    }
    url = f"{base}{COMPLETIONS_PATH}?{urlencode(query)}"
    return UpstreamRequest(url, headers, msgspec.json.encode(body), chat_id)


def _messages(conv: Conversation, history: str) -> list[dict[str, str]]:
    if history == "flatten" and len(conv.turns) > 1:
        lines = [f"{_FLAT_LABEL[turn.role]}: {turn.text}" for turn in conv.turns]
        return [{"role": "user", "content": "\n\n".join(lines)}]
    return [{"role": _ROLE[turn.role], "content": turn.text} for turn in conv.turns]


def _params(conv: Conversation) -> dict[str, float | int]:
    params: dict[str, float | int] = {}
    if conv.temperature is not None:
        params["temperature"] = conv.temperature
    if conv.top_p is not None:
        params["top_p"] = conv.top_p
    if conv.max_tokens is not None:
        params["max_tokens"] = conv.max_tokens
    return params
