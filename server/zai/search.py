"""What the upstream's own web search did in one answer, read off its site-tool output.

Owns ``searches``: the queries (2026: the ``tool_call`` frames' ``delta_arguments`` of a
``search`` call, ``{"search_query": [{"q": ...}]}``; 2025: a ``<glm_block>``'s
``metadata.arguments``, ``{"queries": [...]}``) and the sources it listed (the references
``citations.references`` resolves, ``[ref_id=…†Title†url]`` lines, and every 2025
``search_result`` entry), as one neutral ``WebSearch`` per search call. The upstream does
not say which source came from which of several calls, so every source goes with the first
call's query (one search is what a turn runs in every capture). Faces render these as their API's
search blocks (Anthropic ``server_tool_use`` + ``web_search_tool_result``).
"""

import re

import msgspec

from server.core.chat import WebSearch
from server.zai.citations import references

__all__ = ["searches"]

_GLM_CALL = re.compile(r'"name":\s*"search",\s*"arguments":\s*"((?:[^"\\]|\\.)*)"')
# A 2025 search_result entry (their ref_id is empty, so references() keys none of them)
_RESULT = re.compile(r'"title":\s*"((?:[^"\\]|\\.)*)",\s*"url":\s*"([^"]+)"')


def _queries(arguments: str) -> list[str]:
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return [arguments.strip()] if arguments.strip() else []
    if not isinstance(value, dict):
        return []
    found: list[str] = []
    for entry in value.get("search_query") or []:
        q = entry.get("q") if isinstance(entry, dict) else entry
        if isinstance(q, str) and q.strip():
            found.append(q.strip())
    for key in ("queries", "query", "q"):
        more = value.get(key)
        for q in [more] if isinstance(more, str) else more or []:
            if isinstance(q, str) and q.strip():
                found.append(q.strip())
    return found


def searches(calls: list[tuple[str, str]], tool_text: str) -> tuple[WebSearch, ...]:
    """``calls``: (name, arguments) of the 2026 site-tool calls; ``tool_text``: all site-tool
    output of the answer (2026 tool responses, 2025 glm_block bodies)."""
    queries = [q for name, args in calls if name == "search" for q in _queries(args)[:1]]
    for encoded in _GLM_CALL.findall(tool_text):
        try:
            queries += _queries(msgspec.json.decode(f'"{encoded}"'))[:1]
        except msgspec.DecodeError:
            continue
    found = {url: title for title, url in references(tool_text).values()}
    for title, url in _RESULT.findall(tool_text):
        found.setdefault(url, title.replace('\\"', '"'))
    sources = tuple((title, url) for url, title in found.items())
    if not queries:
        return (WebSearch("", sources),) if sources else ()
    return (WebSearch(queries[0], sources), *(WebSearch(q) for q in queries[1:]))
