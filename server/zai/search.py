"""What the upstream's own web search did in one answer, read off its site-tool output.

Owns ``searches``: the queries (2026: the ``tool_call`` frames' ``delta_arguments`` of a
``search`` call, ``{"search_query": [{"q": ...}]}``; 2025: a ``<glm_block>``'s
``metadata.arguments``, ``{"queries": [...]}``) and the sources it listed (the references
``citations.references`` resolves, ``[ref_id=…†Title†url]`` lines, and every 2025
``search_result`` entry), as one neutral ``WebSearch`` per search call, with the sources its
own call found: a 2026 call owns the tool output written after it opened and before the next
search call opened (an ``open`` call reading its pages is part of it), a 2025 ``<glm_block>``
holds its call and its results together; output no call claims goes with the first search.
Faces render these as their API's search blocks (Anthropic ``server_tool_use`` +
``web_search_tool_result``), so a turn that searches twice shows each search's own sources.
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


def _sources(text: str) -> tuple[tuple[str, str], ...]:
    """(title, url) of the sources in some site-tool output, each url once."""
    found = {url: title for title, url in references(text).values()}
    for title, url in _RESULT.findall(text):
        found.setdefault(url, title.replace('\\"', '"'))
    return tuple((title, url) for url, title in found.items())


def _glm_query(entry: str) -> str | None:
    """The first query of the search call a 2025 ``<glm_block>`` holds, if it holds one."""
    for encoded in _GLM_CALL.findall(entry):
        try:
            queries = _queries(msgspec.json.decode(f'"{encoded}"'))
        except msgspec.DecodeError:
            continue
        if queries:
            return queries[0]
    return None


def searches(calls: list[tuple[str, str, int]], entries: list[str]) -> tuple[WebSearch, ...]:
    """``calls``: (name, arguments, index of the first ``entries`` item written after the
    call opened) of the 2026 site-tool calls; ``entries``: the site-tool output of the
    answer in order (each 2026 tool response, each 2025 glm_block body)."""
    opened = [(at, q) for name, args, at in calls if name == "search" for q in _queries(args)[:1]]
    found: list[tuple[str, list[str]]] = []
    loose = list(entries[: opened[0][0]] if opened else entries)
    for i, (at, query) in enumerate(opened):  # a 2026 call owns what came until the next one
        end = opened[i + 1][0] if i + 1 < len(opened) else len(entries)
        found.append((query, list(entries[at:end])))
    glm = [(q, [entry]) for entry in loose if (q := _glm_query(entry)) is not None]
    rest = [entry for entry in loose if _glm_query(entry) is None]
    found = glm + found  # 2025 blocks and 2026 calls do not mix in one answer
    if not found:
        sources = _sources("\n".join(rest))
        return (WebSearch("", sources),) if sources else ()
    if rest:  # output no call claims (written before any): the first search's
        found[0][1][:0] = rest
    return tuple(WebSearch(query, _sources("\n".join(texts))) for query, texts in found)
