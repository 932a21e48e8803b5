"""Build the fake upstream's vcrpy cassettes (cassettes/*.yaml) from the public captures.

Owns the fixture data every upstream test plays: it reads ``../shared/zai/captures/`` (relative
to the repo root), builds one interaction per upstream behaviour (captured frames verbatim where
they exist, a minimal plausible completion where a capture is only an excerpt, each explained in
a comment at the top of its cassette), replays every stream with the buffer model (asserting
each ``edit_index`` fits the text written so far) and dumps them with vcrpy's own serializer,
then loads each file back with vcrpy to prove the bytes survive. No credential is written:
tokens are fake JWTs whose signature part is ``fake-signature``.
Run from the repo root: ``.venv/bin/python scripts/captures_to_cassettes.py``.
"""

import base64
import json
import re
import uuid
from pathlib import Path
from urllib.parse import urlencode

from vcr.cassette import Cassette
from vcr.matchers import method, path
from vcr.record_mode import RecordMode
from vcr.request import Request
from vcr.serialize import serialize
from vcr.serializers import yamlserializer

from server.zai.signature import DEFAULT_KEY, sign

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "../shared/zai/captures"
OUT = ROOT / "cassettes"
BASE = "https://chat.z.ai"
FE_VERSION = "prod-fe-1.1.95"
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/146.0.0.0 Safari/537.36"
)
TS = 1774188049259  # the millisecond timestamp of capture 01, reused for every request


def fake_jwt(user_id: str, email: str) -> str:
    """An ES256-looking JWT with the real payload shape and an obviously fake signature."""

    def b64(obj: dict) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header, payload = b64({"alg": "ES256", "typ": "JWT"}), b64({"id": user_id, "email": email})
    return f"{header}.{payload}.fake-signature"


GUEST_ID = "7c1f0b2e-5d3a-4e8b-9f21-0a6c4d8e2b17"
GUEST_EMAIL = "guest-1789488950420@guest.com"
GUEST_TOKEN = fake_jwt(GUEST_ID, GUEST_EMAIL)
USER_ID = "3b9d2a51-8e47-4c0f-a6d2-5f1e9c7b0a84"
USER_EMAIL = "user@example.com"


def capture(name: str) -> str:
    matches = sorted(CAPTURES.glob(f"{name}_*"))
    assert len(matches) == 1, name
    return matches[0].read_text(encoding="utf-8")


def data_lines(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def py_frame(**data) -> str:
    """A 2025-style frame: Python json spacing, UTF-8 kept literal (as in captures 05 and 06)."""
    return json.dumps({"type": "chat:completion", "data": data}, ensure_ascii=False)


def js_frame(**data) -> str:
    """A 2026-style frame: compact JSON (as in captures 01 and 07)."""
    return json.dumps(
        {"type": "chat:completion", "data": data}, ensure_ascii=False, separators=(",", ":")
    )


def chunks(text: str, words: int = 3) -> list[str]:
    """Split text into deltas of a few words, keeping every character."""
    parts = re.findall(r"\s*\S+|\s+$", text)
    out = ["".join(parts[i : i + words]) for i in range(0, len(parts), words)]
    assert "".join(out) == text
    return out


def u16(text: str) -> int:
    """Length in UTF-16 code units, as JavaScript (and ``edit_index``) counts."""
    return len(text.encode("utf-16-le")) // 2


def replay(events: list[str]) -> str:
    """The upstream buffer model as the page reads it (PROTOCOL.md section 6.1): an edit keeps
    ``edit_index`` UTF-16 code units (no index: 0) then appends, a delta appends, a frame with
    ``content`` replaces the text; asserts every edit lands inside the text written so far."""
    text = ""
    for event in events:
        data = json.loads(event).get("data")
        if not isinstance(data, dict):
            continue
        if "edit_content" in data:
            index = data.get("edit_index", 0)
            assert 0 <= index <= u16(text), (index, u16(text))
            kept = text.encode("utf-16-le")[: 2 * index].decode("utf-16-le")
            text = kept + data["edit_content"]
        elif data.get("delta_content"):
            text += data["delta_content"]
        elif "content" in data and "error" not in data:
            text = data["content"]
    return text


def completion_request(model: str, prompt: str, mcp_servers=(), **features) -> Request:
    request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{model}/{prompt}"))
    query = {
        "timestamp": TS,
        "requestId": request_id,
        "user_id": GUEST_ID,
        "version": "0.0.1",
        "platform": "web",
        "token": GUEST_TOKEN,
        "current_url": f"{BASE}/",
        "pathname": "/",
        "signature_timestamp": TS,
    }
    body = {
        "stream": True,
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "signature_prompt": prompt,
        "params": {},
        "extra": {},
        "features": {
            "image_generation": False,
            "web_search": False,
            "auto_web_search": False,
            "preview_mode": True,
            "flags": [],
            "enable_thinking": True,
            **features,
        },
        "chat_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, request_id)),
        "id": request_id,
        "background_tasks": {"title_generation": False, "tags_generation": False},
        "mcp_servers": list(mcp_servers),
        "files": [],
    }
    headers = {
        "Accept": "*/*",
        "Content-Type": "application/json",
        "X-FE-Version": FE_VERSION,
        "X-Signature": sign(DEFAULT_KEY, request_id, TS, GUEST_ID, prompt),
        "Origin": BASE,
        "Referer": f"{BASE}/",
        "User-Agent": UA,
    }
    return Request(
        "POST",
        f"{BASE}/api/v2/chat/completions?{urlencode(query)}",
        json.dumps(body, ensure_ascii=False).encode(),
        headers,
    )


def get_request(url_path: str) -> Request:
    return Request("GET", BASE + url_path, None, {"Accept": "*/*", "User-Agent": UA})


def response(code: int, reason: str, content_type: str, body: str | bytes, **extra) -> dict:
    headers = {"Content-Type": [content_type]}
    headers.update({k.replace("_", "-"): [v] for k, v in extra.items()})
    raw = body.encode() if isinstance(body, str) else body
    return {
        "status": {"code": code, "message": reason},
        "headers": headers,
        "body": {"string": raw},
    }


def sse(events: list[str]) -> dict:
    body = "".join(f"data: {event}\n\n" for event in events)
    return response(200, "OK", "text/event-stream; charset=utf-8", body, Cache_Control="no-cache")


def json_response(code: int, reason: str, obj: dict, **extra) -> dict:
    return response(code, reason, "application/json", json.dumps(obj, ensure_ascii=False), **extra)


def write(
    name: str, comment: str, interactions: list[tuple[Request, dict]], check_frames: bool = True
) -> None:
    for _, resp in interactions:
        if check_frames and resp["headers"]["Content-Type"][0].startswith("text/event-stream"):
            events = resp["body"]["string"].decode().split("\n\n")
            assert events[-1] == "", name
            replay([e.removeprefix("data: ") for e in events[:-1] if e != "data: [DONE]"])
    bodies = [resp["body"]["string"] for _, resp in interactions]  # serialize() decodes in place
    dumped = serialize(
        {"requests": [r for r, _ in interactions], "responses": [resp for _, resp in interactions]},
        yamlserializer,
    )
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.strip().splitlines())
    assert head.isascii(), name  # vcrpy reads cassettes with the locale's encoding
    target = OUT / f"{name}.yaml"
    target.write_text(head + dumped, encoding="utf-8")
    loaded = Cassette.load(
        path=str(target),
        match_on=[method, path],
        record_mode=RecordMode.NONE,
        allow_playback_repeats=True,
    )
    assert [r["body"]["string"] for r in loaded.responses] == bodies, name
    print(f"{target.relative_to(ROOT)}: {len(interactions)} interaction(s)")


def capture04() -> list[str]:
    lines = [line.strip() for line in capture("04").splitlines() if line.strip()]
    events: list[str] = []
    for i, line in enumerate(lines):
        if line != "{...}":
            events.append(line)
            continue
        closing = next(json.loads(e)["data"] for e in lines[i + 1 :] if '"edit_index"' in e)
        if "</details>" in closing["edit_content"]:
            events.append(_thinking_gap(events, lines[i + 1 :], closing["edit_content"]))
    last = next(i for i, e in enumerate(events) if '"edit_index":1759' in e)
    length = len(replay(events[:last]))
    assert length == 1699, length
    events[last] = events[last].replace('"edit_index":1759', f'"edit_index":{length}')
    return events


def _thinking_gap(before: list[str], after: list[str], closing: str) -> str:
    """The thinking delta the author elided, spelled out by the closing edit that repeats
    the whole thinking; without it a streaming client would see thinking later rewritten."""
    text = replay(before)
    opened = text.rindex("</summary>\n") + len("</summary>\n")
    streamed = text[opened:]
    rest = "".join(
        json.loads(e)["data"]["delta_content"]
        for e in after
        if '"delta_content"' in e and '"edit_index"' not in e
    )
    thinking = closing[closing.index("</summary>\n") + len("</summary>\n") :]
    assert thinking.startswith(streamed), streamed
    start = len(streamed)
    end = thinking.index(rest[:8], start)
    delta = {"delta_content": thinking[start:end], "phase": "thinking"}
    return json.dumps(
        {"type": "chat:completion", "data": delta}, ensure_ascii=False, separators=(",", ":")
    )


def capture05() -> list[str]:
    events = data_lines(capture("05"))
    assert len(events) == 559 and "Thinkingâ€¦" in events[0]
    events[0] = events[0].replace("Thinkingâ€¦", "Thinking…")
    # the trailing phase-other frame re-edits at the final length: a check of the whole replay
    assert len(replay(events[:-1])) == json.loads(events[-1])["data"]["edit_index"] == 6308
    return events


def capture06() -> dict[str, str]:
    text = capture("06")
    return dict(re.findall(r"^== ([A-L])\. [^\n]*\n(.*?)(?=^== |\Z)", text, re.M | re.S))


def search_2025() -> list[str]:
    """Capture 09's stored message, streamed the way captures 04/05 stream (see comment)."""
    text = capture("09")
    block_raw = re.search(r"<glm_block >(.*?)</glm_block>", text, re.S).group(1)
    block_raw = block_raw.replace("\\n\\n…[trimmed 16 more result entries]…", "")
    block = json.loads(block_raw.replace(", …[trimmed 16 more]…", ""))
    assert json.dumps(block) in text.replace(
        "\\n\\n…[trimmed 16 more result entries]…", ""
    ).replace(", …[trimmed 16 more]…", "")
    thinking = (
        "> The user is asking about which calculus is faster in concurrency for CPUs."
        " They probably mean which kinds of calculus computations (derivatives,"
        " integrals, differential equations) parallelise best on multi-core CPUs.\n> \n"
        "> I'll start with a search to find relevant information about calculus"
        " performance in concurrent CPU environments."
    )
    opener = '<details type="reasoning" done="false">\n<summary>Thinking…</summary>\n'
    events = [
        py_frame(delta_content=opener + d if i == 0 else d, phase="thinking")
        for i, d in enumerate(chunks(thinking, 4))
    ]
    closed = (
        'true" duration="2">\n<summary>Thought for 2 seconds</summary>\n'
        + thinking
        + "\n</details>\nI'll search"
    )
    events.append(py_frame(edit_index=32, edit_content=closed, phase="answer"))
    events += [
        py_frame(delta_content=d, phase="answer")
        for d in [
            " for information about which calculus",
            " operations are faster in",
            " concurrency on CPUs.",
        ]
    ]
    pending = json.loads(json.dumps(block))
    pending["data"]["metadata"].update(result="", duration="0s", status="")
    pending["data"]["browser"]["search_result"] = []
    first, final = json.dumps(pending), json.dumps(block)
    base = len(replay(events)) + len("\n\n<glm_block >")
    events.append(
        py_frame(
            edit_index=base - len("\n\n<glm_block >"),
            edit_content=f"\n\n<glm_block >{first}</glm_block>",
            phase="tool_call",
        )
    )
    same = len(
        next(p for p in (first[:i] for i in range(len(first), 0, -1)) if final.startswith(p))
    )
    events.append(
        py_frame(edit_index=base + same, edit_content=final[same:] + "</glm_block>", phase="other")
    )
    hits = block["data"]["browser"]["search_result"]
    cite = [f"【{h['index']}†{h['title']}†{h['url']}】" for h in hits]
    answer = (
        '\n\nThere is no single "faster calculus" on a CPU: what matters is how well a'
        " computation splits into independent pieces. Numerical integration over many"
        " intervals or finite differences on a grid parallelise almost perfectly, while"
        " step-by-step solvers are held back by synchronisation and memory bandwidth"
        f"{cite[0]}. Benchmarks likewise show that calculations which proceed"
        f" independently of each other scale best as processors are added{cite[1]}."
    )
    events += [py_frame(delta_content=d, phase="answer") for d in chunks(answer, 5)]
    usage = {
        "prompt_tokens": 2315,
        "completion_tokens": 262,
        "total_tokens": 2577,
        "prompt_tokens_details": {"cached_tokens": 0},
        "words": 1030,
    }
    events.append(py_frame(usage=usage, phase="other"))
    events.append(py_frame(done=True, delta_content="", phase="done"))
    return events


def toolcall_2026() -> list[str]:
    """Capture 07's frame shapes as one small deep-search turn (see comment)."""
    text = capture("07")
    frames = []
    for raw in re.findall(r"^data: (.*)$", re.sub(r"\n +", "", text), re.M):
        try:
            frames.append(json.loads(raw))
        except ValueError:  # the tool_response frame is elided ("{…}") in the capture
            continue
    call1, call2 = (f["data"] for f in frames if f["data"].get("phase") == "tool_call")
    final_usage = next(f["data"]["usage"] for f in frames if "usage" in f["data"])
    call_id = call1["metadata"]["tool_call_id"]
    think1 = (
        "The user wants a deep search on this week's news about Elon Musk. I should"
        " search for recent coverage first, then summarise the main points with citations."
    )
    events = [js_frame(delta_content=d, phase="thinking") for d in chunks(think1)]
    events += [js_frame(**call1), js_frame(**call2)]
    more = [' Musk news this week", "', 'recency": 14}]}']
    events += [
        js_frame(phase="tool_call", delta_arguments=d, metadata={"type": "function"}) for d in more
    ]
    json.loads(call1["delta_arguments"] + call2["delta_arguments"] + "".join(more))
    events.append(
        js_frame(
            phase="other",
            usage={
                "prompt_tokens": 1650,
                "completion_tokens": 61,
                "total_tokens": 1711,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        )
    )
    hits = [
        (
            "Weekly technology news roundup",
            "https://news.example.com/tech-roundup",
            "2026-09-14",
            "The week's main technology stories, including Tesla and SpaceX.",
        ),
        (
            "Starship test flight update",
            "https://space.example.org/starship-update",
            "2026-09-12",
            "What happened on the latest Starship test flight and what is next.",
        ),
    ]
    result = "".join(
        f"[ref_id=turn0search{i}†{t}†{u}]\nDate: {d}\n{s}\n\n"
        for i, (t, u, d, s) in enumerate(hits)
    )
    browser = {
        "search_result": [
            {"title": t, "url": u, "text": s, "index": i + 1, "ref_id": f"turn0search{i}"}
            for i, (t, u, _, s) in enumerate(hits)
        ]
    }
    events.append(
        js_frame(
            phase="tool_response",
            tool_name="search",
            status="completed",
            delta_content=result,
            metadata={"browser": browser, "tool_call_id": call_id},
        )
    )
    think2 = (
        "Two useful results: a weekly roundup and a Starship flight update. I'll"
        " summarise both briefly and cite each one."
    )
    events += [js_frame(delta_content=d, phase="thinking") for d in chunks(think2)]
    answer = (
        "Here is what the search found for this week:\n\n- **Tesla and SpaceX overview:**"
        " the weekly roundup covers the main stories【turn0search0】.\n- **Starship:** the"
        " latest test flight and the next steps are described here【turn0search1】."
    )
    events += [js_frame(delta_content=d, phase="answer") for d in chunks(answer)]
    events.append(js_frame(phase="other", usage=final_usage))
    events.append(
        js_frame(delta_content="\n\nWant me to dig deeper into either one?", phase="answer")
    )
    events.append(js_frame(phase="done", done=True))
    return events


def utf16_rewind_2026() -> list[str]:
    """Capture 01's thinking frames verbatim, then an answer with characters outside the BMP
    and an edit after the usage frame that rewinds into the last sentence (already streamed)
    and writes it again, completed (see comment)."""
    thinking = [e for e in data_lines(capture("01")) if '"phase":"thinking"' in e]
    assert len(thinking) > 20
    answer = [
        "Hi there! \U0001f44b I'm GLM \U0001f916,",
        " trained by Z.ai. Emoji like \U0001f600\U0001f389,",
        " math letters like \U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",
        " and the ideograph \U00020000 sit outside the BMP,",
        " so each counts two UTF-16 units. What would",
        " you like to",
    ]
    events = thinking + [js_frame(delta_content=d, phase="answer") for d in answer]
    usage = {"prompt_tokens": 6, "completion_tokens": 96, "total_tokens": 102}
    events.append(js_frame(phase="other", usage={**usage, "prompt_tokens_details": {}}))
    text = replay(events)
    start = text.rindex(" What would")
    index = u16(text[:start])
    assert index > len(text[:start])  # a code-point count would cut later, in the sentence
    events.append(
        js_frame(
            edit_index=index,
            edit_content=" What would you like to discuss? \U0001f642",
            phase="other",
        )
    )
    events.append(js_frame(phase="done", done=True))
    return events


def snapshot_2026() -> list[str]:
    """A plain answer whose text is replaced by a ``content`` snapshot, then by an
    ``edit_content`` without ``edit_index`` (index 0), each restating the text and adding to
    it, around emoji (see comment)."""
    first = ["Sure \U0001f44d here", " is a list:\n- one \U0001f34e", "\n- two \U0001f350"]
    events = [js_frame(delta_content=d, phase="answer") for d in first]
    text = "".join(first) + "\n- three \U0001f34a"
    events.append(js_frame(content=text, phase="answer"))
    events.append(js_frame(edit_content=text + "\n\nDone \u2705", phase="answer"))
    events.append(js_frame(delta_content=" Enjoy \U0001f389", phase="answer"))
    usage = {"prompt_tokens": 9, "completion_tokens": 31, "total_tokens": 40}
    events.append(js_frame(phase="other", usage={**usage, "prompt_tokens_details": {}}))
    events.append(js_frame(phase="done", done=True))
    assert replay(events).endswith("Done \u2705 Enjoy \U0001f389")
    return events


def rewrite_streamed_2026() -> list[str]:
    """An answer whose last sentence, already streamed, is then edited to different words
    (see comment): the case a streaming client cannot be given exactly without holding back."""
    deltas = ["The capital of", " Australia is Sydney", " \U0001f1e6\U0001f1fa, a", " big city."]
    events = [js_frame(delta_content=d, phase="answer") for d in deltas]
    text = replay(events)
    index = u16(text[: text.index(" Sydney")])
    events.append(
        js_frame(
            edit_index=index,
            edit_content=" Canberra \U0001f1e6\U0001f1fa, a planned city.",
            phase="answer",
        )
    )
    usage = {"prompt_tokens": 7, "completion_tokens": 18, "total_tokens": 25}
    events.append(js_frame(phase="other", usage={**usage, "prompt_tokens_details": {}}))
    events.append(js_frame(phase="done", done=True))
    return events


HOME_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Z.ai - Free AI Chatbot &amp; Agent powered by GLM-5 &amp; GLM-4.7</title>
<link rel="icon" href="/static/favicon.png">
<link rel="stylesheet" href="/z-ai/frontend/{FE_VERSION}/assets/index-abc.css">
<script type="module" crossorigin src="/z-ai/frontend/{FE_VERSION}/assets/index-abc.js"></script>
</head>
<body>
<div id="root"></div>
</body>
</html>
"""

WAF_TAIL = (
    '"+(e.getMonth()+1)+"-"+e.getDate()+" "+e.getHours()+":"+e.getMinutes()}</script>'
    '<textarea id="renderData" style="display:none">{"block_message":"Sorry, your request'
    " has been blocked as it may cause potential threats to the server's security.\","
    '"url":"chat.z.ai/api/v2/chat/completions","time":"1789488950420",'
    '"traceid":"0bc0e0a417894889504201234e0000"}</textarea><script>var d=getRenderData();'
    'document.getElementById("block_message").innerText=d.block_message;'
    'document.getElementById("url").innerText=d.url;'
    'document.getElementById("time").innerText=convertTimestampToString(d.time);'
    'document.getElementById("traceid").innerText=d.traceid</script></body></html>\n'
)

INVALID_TOKEN = "Your session has expired or the token is invalid. Please sign in again."


def auth_body(user_id: str, email: str, name: str, role: str) -> dict:
    return {
        "id": user_id,
        "email": email,
        "name": name,
        "role": role,
        "token": fake_jwt(user_id, email),
        "token_type": "Bearer",
        "expires_at": None,
        "permissions": {},
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    auths = get_request("/api/v1/auths/")
    hi = completion_request("glm-5", "hi")
    err = capture06()

    write(
        "home",
        "source: none (synthetic); the front-end version appears only in asset paths\n"
        f"(/z-ai/frontend/{FE_VERSION}/assets/), as PROTOCOL.md section 2 describes.",
        [(get_request("/"), response(200, "OK", "text/html; charset=utf-8", HOME_HTML))],
    )
    write(
        "guest_auth",
        "source: PROTOCOL.md section 1, captures/03 (response shape); synthetic.\n"
        "token: fake ES256-looking JWT, payload {id, email} matches the body, signature faked.",
        [
            (
                auths,
                json_response(
                    200, "OK", auth_body(GUEST_ID, GUEST_EMAIL, "Guest-1789488950420", "guest")
                ),
            )
        ],
    )
    write(
        "guest_auth_user_role",
        "source: captures/03 (signin response shape, role user);\n"
        "synthetic. Token validation of a real account; fake JWT.",
        [(auths, json_response(200, "OK", auth_body(USER_ID, USER_EMAIL, "Test User", "user")))],
    )
    write(
        "guest_auth_fallback",
        "source: PROTOCOL.md section 1 (the guest fallback POST\n"
        "/api/v1/auths/guest with {}); synthetic, same answer shape as guest_auth.",
        [
            (
                Request(
                    "POST",
                    BASE + "/api/v1/auths/guest",
                    b"{}",
                    {"Content-Type": "application/json", "User-Agent": UA},
                ),
                json_response(
                    200, "OK", auth_body(GUEST_ID, GUEST_EMAIL, "Guest-1789488950420", "guest")
                ),
            )
        ],
    )
    write(
        "auth_401",
        "source: PROTOCOL.md section 1 (401 = dead token); body text plausible\n"
        "(no capture of this response body exists).",
        [(auths, json_response(401, "Unauthorized", {"detail": INVALID_TOKEN}))],
    )

    write(
        "stream_glm5_plain_thinking",
        "source: captures/01 (GLM-5, 2026-03-22); every frame"
        " verbatim.\ncompleted: nothing. Request URI/body/headers are synthetic (fake token).",
        [(hi, sse(data_lines(capture("01"))))],
    )
    write(
        "stream_glm46_details_thinking",
        "source: captures/05 (GLM-4.6, 2025-10-02, old /api/chat/completions era); all 559\n"
        "frames verbatim, Python-style spacing kept, served here on the v2 URL.\n"
        "changed: the mojibake 'Thinking' + U+00E2 U+20AC U+00A6 in frame 1 was replaced by\n"
        "'Thinking' + U+2026 (what the upstream really sends, cf. capture 04); edit indices\n"
        "are unaffected (the edit at 32 precedes it).",
        [(completion_request("GLM-4-6-API-V1", "Hi hello, how are yaa?"), sse(capture05()))],
    )
    write(
        "stream_glm46v_details_glmblock",
        "source: captures/04 (GLM-4.6V, 2025-12); frames verbatim except:\n"
        "completed: the author's two '{...}' elisions inside thinking were filled with the\n"
        "missing thinking text, which the closing edits (index 32 and 1423) spell out in full;\n"
        "the '{...}' elision inside the final answer was dropped, so the final frame's\n"
        "edit_index 1759 was shifted to 1699, the real buffer length at that point (the\n"
        "elision removed 60 characters; checked by replaying the buffer model).",
        [(completion_request("glm-4.6v", "请框出图片中人物的面部"), sse(capture04()))],
    )
    write(
        "stream_search_glmblock_2025",
        "source: captures/09 (stored message of a 2025 search turn), streamed like 04/05.\n"
        "verbatim from 09: the details opener/closer shapes, the thinking's first and last\n"
        "sentences, the answer's first sentence and the whole glm_block JSON (metadata, result\n"
        "with its U+3010 N U+2020 title U+2020 url U+3011 markers, browser.search_result).\n"
        "completed: the trimmed thinking middle; the 16 trimmed search results were left out\n"
        "(2 kept); the tool_call-phase insert (status and result empty), the phase-other\n"
        "rewrite from the first differing character (as capture 04 does), the cited answer,\n"
        "usage and done frame are synthetic. Every edit_index checked by replay.",
        [
            (
                completion_request(
                    "0727-360B-API",
                    "which calculus is faster in concurrency for cpu",
                    web_search=True,
                    auto_web_search=True,
                ),
                sse(search_2025()),
            )
        ],
    )
    write(
        "stream_v2_toolcall_search_2026",
        "source: captures/07 (2026-09 HAR excerpt, x-preview-l deep search). Verbatim from 07:\n"
        "the two tool_call frames (delta_name/delta_arguments/metadata.tool_call_id) and the\n"
        "final usage object. completed: thinking/answer text, the remaining argument fragments,\n"
        "the tool_response frame (07 elides it: results are invented, on example domains), an\n"
        "earlier usage frame for the first model call; usage placed before the last answer\n"
        "delta as in captures 01/07.",
        [
            (
                completion_request(
                    "x-preview-l",
                    "deep search this week's news about Elon Musk",
                    mcp_servers=["advanced-search"],
                ),
                sse(toolcall_2026()),
            )
        ],
    )
    filtered = [
        py_frame(delta_content=d, phase="answer")
        for d in ["Sure, here", " is the story", " you asked for:"]
    ]
    stop = data_lines(err["F"])[0]
    assert stop.count("{") == stop.count("}") + 1  # the pasted frame lost its last brace
    filtered.append(stop + "}")
    write(
        "stream_content_filter",
        "source: captures/06 F (content-security stop, verbatim last\n"
        "frame; it carries done:true and nothing followed it in the capture).\n"
        "completed: the three answer deltas before it are synthetic (2025 Python spacing);\n"
        "the pasted F frame lacks the envelope's closing '}' (invalid JSON): one '}' added.\n"
        "note: its edit_index 0 / edit_content ' ' wipes the buffer, as the upstream does.",
        [(completion_request("GLM-4-6-API-V1", "Tell me a story"), sse(filtered))],
    )

    synthesized = (
        "synthesized (PROTOCOL.md section 6.1: no capture holds a character outside the BMP,\n"
        "a content snapshot or an index-less edit; the frame shapes are capture 01's)."
    )
    write(
        "stream_utf16_edit_rewind",
        "source: captures/01 (GLM-5, 2026-03-22): every thinking frame verbatim. "
        + synthesized
        + "\ncompleted: the answer, with emoji, math letters (U+1D518...) and U+20000, usage,\n"
        "and a phase-other edit after the usage (as a 2026 trace does) whose edit_index\n"
        "counts UTF-16 units up to the start of the last sentence, already streamed, and\n"
        "writes that sentence again, completed. A code-point count cuts 12 characters\n"
        "too late and repeats text. Every edit_index checked by replay in UTF-16 units.",
        [(hi, sse(utf16_rewind_2026()))],
    )
    write(
        "stream_snapshot_2026",
        "source: "
        + synthesized
        + "\ncompleted: three answer deltas with emoji, a frame with content (the whole\n"
        "text, one more line), an edit_content without edit_index (so 0: the whole text\n"
        "again, plus a line), a last delta, usage and done.",
        [(hi, sse(snapshot_2026()))],
    )
    write(
        "edit_rewrites_streamed",
        "source: "
        + synthesized
        + "\ncompleted: four answer deltas (a flag emoji: two astral characters), then an\n"
        "edit that goes back into text already streamed and changes it ('Sydney' ->\n"
        "'Canberra'); a streaming client has the old words unless the gateway held them\n"
        "back (STREAM_HOLDBACK). Not a stream_* cassette: its streamed text depends on that.",
        [(hi, sse(rewrite_streamed_2026()))],
    )

    inband = {
        "error_inband_426": ("D", [re.search(r"解析数据块: (.*)", err["D"]).group(1)]),
        "error_inband_model_403": ("H", [ln for ln in err["H"].splitlines() if ln.startswith("{")]),
        "error_inband_captcha": ("G", data_lines(err["G"])),
        "error_inband_concurrency": ("L", data_lines(err["L"])),
    }
    for name, (block, events) in inband.items():
        note = " (a hand-made fixture, not a capture)" if block == "L" else ""
        write(
            name,
            f"source: captures/06 {block}{note}; payload verbatim, HTTP 200, framed as"
            " SSE\nevents; nothing follows it (the capture shows nothing more).",
            [(hi, sse([e.strip() for e in events]))],
        )

    sig = re.search(r"上游错误响应: (.*)", err["A"]).group(1).strip()
    assert sig in err["B"]
    waf = re.search(r"body: (.*)", err["I"]).group(1)
    waf = waf.removesuffix(" ...").removesuffix('"- ...').rstrip()
    assert waf.endswith('e.getFullYear()+"-'), waf[-40:]
    http = {
        "error_http_400_signature": (
            "captures/06 A/B, body verbatim",
            400,
            "Bad Request",
            "application/json",
            sig,
        ),
        "error_http_401": (
            "PROTOCOL.md section 4 (401 dead token); body plausible, no capture",
            401,
            "Unauthorized",
            "application/json",
            json.dumps({"detail": INVALID_TOKEN}),
        ),
        "error_http_405_waf": (
            "captures/06 I (Aliyun WAF page); completed: the excerpt ends in\n"
            "its script, which was finished minimally (date format, render\n"
            "data with the block message quoted in 06 J, closing tags)",
            405,
            "Not Allowed",
            "text/html; charset=utf-8",
            waf + WAF_TAIL,
        ),
        "error_http_426": (
            "captures/06 D/K (426 stale front-end); body modelled on the\n"
            "in-band 426 detail, no capture of the HTTP body",
            426,
            "Upgrade Required",
            "application/json",
            json.dumps(
                {
                    "detail": "Your client version (prod-fe-1.0.70) is outdated."
                    " Minimum required: 1.1.95. Please refresh the page"
                }
            ),
        ),
        "error_http_429": (
            "none: no 429 was ever captured (PROTOCOL.md section 4); plausible",
            429,
            "Too Many Requests",
            "application/json",
            json.dumps({"detail": "Too Many Requests"}),
        ),
        "error_http_500": (
            "none: plausible 5xx (PROTOCOL.md section 4)",
            500,
            "Internal Server Error",
            "application/json",
            json.dumps({"detail": "Internal Server Error"}),
        ),
    }
    for name, (source, code, reason, ctype, body) in http.items():
        extra = {"Retry_After": "30"} if code == 429 else {}
        write(name, f"source: {source}.", [(hi, response(code, reason, ctype, body, **extra))])


if __name__ == "__main__":
    main()
