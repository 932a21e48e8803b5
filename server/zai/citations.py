"""The upstream's search citations, turned into markdown links a reader can follow.

Owns ``references`` and ``linkify``. Search answers cite sources in the site's own markers:
2025 answers carry them whole (``【3†Title†https://…】``); 2026 answers cite an id
(``【turn0search1】``, sometimes with a line range ``【turn0search1†L3-L9】``) whose title and
URL came earlier, in the site tool's output (``[ref_id=turn0search1†Title†https://…]``) or in
a ``<glm_block>``'s ``search_result``. Each marker becomes `` [Title](url)``; a marker whose
source is unknown is dropped rather than shown raw. A marker still arriving is held back
(up to ``MAX_MARKER`` characters), so streamed text never shows half of one.
"""

import re

__all__ = ["MARKER", "MAX_MARKER", "link", "linkify", "references"]

MAX_MARKER = 400
MARKER = re.compile(r"\s?【([^】]*)】")
_REF_TEXT = re.compile(r"\[ref_id=([^†\]\s]+)†([^†\]]*)†([^\]\s]+)\]")
_REF_JSON = re.compile(
    r'"title":\s*"((?:[^"\\]|\\.)*)",\s*"url":\s*"([^"]+)"[^{}]*?"ref_id":\s*"([^"]+)"'
)


def references(tool_text: str) -> dict[str, tuple[str, str]]:
    """ref id -> (title, url), from site-tool output and glm_block bodies."""
    refs = {rid: (title, url) for rid, title, url in _REF_TEXT.findall(tool_text)}
    for title, url, rid in _REF_JSON.findall(tool_text):
        refs.setdefault(rid, (title.replace('\\"', '"'), url))
    return refs


def _source(marker: str, refs: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    parts = marker.split("†")
    if len(parts) >= 3 and parts[0].strip().isdigit():
        return parts[1], "†".join(parts[2:]).strip()
    return refs.get(parts[0].strip())


def link(match: re.Match[str], refs: dict[str, tuple[str, str]]) -> str:
    """The markdown link for one ``MARKER`` match ("" when its source is unknown)."""
    found = _source(match[1], refs)
    if found is None:
        return ""  # an unknown source: drop the marker (and the space before it)
    title, url = found
    title = title.strip().replace("[", "(").replace("]", ")") or url
    return f" [{title}]({url})"


def linkify(text: str, refs: dict[str, tuple[str, str]], final: bool = False) -> str:
    """Every complete marker of ``text`` linked; an open one at the end is cut off unless
    ``final``."""
    if "【" not in text:
        return text
    if not final:
        open_at = text.rfind("【")
        if "】" not in text[open_at:] and len(text) - open_at <= MAX_MARKER:
            text = text[:open_at]
    return MARKER.sub(lambda match: link(match, refs), text)
