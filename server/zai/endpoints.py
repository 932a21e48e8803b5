"""Where each upstream call goes: the page's endpoint paths, as one table.

Owns ``Endpoints`` (the path of every call the dialect makes, relative to ``ZAI_BASE_URL``) and
``endpoints`` (the table with an operator's overrides, ``ZAI_PATHS`` or the live config, checked).
The upstream has moved paths before (``/api/chat/completions`` became ``/api/v2/...``,
PROTOCOL.md section 6): a moved one is a setting, not a release.
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Endpoints", "endpoints"]


@dataclass(frozen=True, slots=True)
class Endpoints:
    home: str = "/"  # the page itself: its HTML names the front-end version
    config: str = "/api/config"  # features.enable_captcha
    auths: str = "/api/v1/auths/"  # who a bearer is; a guest's sign-in without one
    guest: str = "/api/v1/auths/guest"  # the older guest sign-in, tried second
    models: str = "/api/models"
    chat: str = "/api/v1/chats/{id}"  # DELETE of one chat
    new_chat: str = "/api/v1/chats/new"  # the page's chat creation (ZAI_CREATE_CHATS)
    files: str = "/api/v1/files/"  # image uploads; the completion names them under it
    completions: str = "/api/v2/chat/completions"


NAMES = tuple(field.name for field in dataclasses.fields(Endpoints))


def endpoints(overrides: Mapping[str, str]) -> Endpoints:
    """The default table with ``overrides`` (name -> path) put in; ``ValueError`` naming the
    first unknown name or path that is not absolute (``chat`` must hold ``{id}``)."""
    for name, path in overrides.items():
        if name not in NAMES:
            raise ValueError(f"unknown endpoint {name!r} (known: {', '.join(NAMES)})")
        if not isinstance(path, str) or not path.startswith("/") or " " in path:
            raise ValueError(f"endpoint {name!r} must be a path starting with '/'")
        if name == "chat" and "{id}" not in path:
            raise ValueError("endpoint 'chat' must hold '{id}' where the chat id goes")
    return dataclasses.replace(Endpoints(), **overrides)
