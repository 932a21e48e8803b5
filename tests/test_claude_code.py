"""The real Claude Code CLI against the gateway's Anthropic face, with a cassette upstream.

The pinned ``@anthropic-ai/claude-code`` (installed by npm into ``.venv-tools/claude-code``
during the run when missing) runs in print mode as a subprocess, offline: a throwaway HOME,
telemetry / error reporting / auto-update / non-essential traffic off, the gateway as
``ANTHROPIC_BASE_URL`` and a tripwire proxy as ``HTTPS_PROXY`` that must see nothing. It must
complete (a) a plain prompt and (b) a turn where it really runs a pre-authorised Bash command
and sends the output back. The requests it sends were recorded in ``tests/claude_code/`` (see
its README); they are also replayed here as raw HTTP, streamed and not, so a change in the
gateway's Anthropic wire shows up even without the CLI.
"""

import asyncio
import json
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from scripts.claude_code_cassettes import (
    BASH_INPUT,
    FINAL_ANSWER,
    PLAIN_ANSWER,
    SEARCH_ANSWER,
    SEARCH_QUERY,
)
from tests.claude_code.cli import INSTALL_TIMEOUT, argv, cli_env, ensure_cli
from tests.conftest import API_KEY

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 300)  # the first test may install the CLI

BASE = ("home", "guest_auth")
FIXTURES = Path(__file__).resolve().parent / "claude_code"
CLI_TIMEOUT = 120
PLAIN_PROMPT = "Reply with a one-line greeting."
TOOL_PROMPT = f"Run `{BASH_INPUT['command']}` with the Bash tool and tell me what it printed."
ALLOW = ("--allowedTools", "Bash(echo hello $((6*7)))", "Bash(tee greeting.txt)")
OUTPUT = "hello 42"  # what the command prints: only a real run produces it


@pytest.fixture(scope="session")
def claude_cli() -> Path:
    try:
        return ensure_cli()
    except FileNotFoundError as exc:  # no npm: say how to get it (a skip fails under CI=true)
        pytest.skip(str(exc))


class Tripwire:
    """A proxy that forwards nothing: it records the first line of every connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            self.seen.append(line.decode("latin-1").strip())
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def run_claude(
    exe: Path, home: Path, base_url: str, prompt: str, *extra: str, **auth: str
) -> tuple[dict, str, list[str]]:
    """Run the CLI once: (its JSON result, its stderr, what the tripwire proxy saw)."""
    tripwire = Tripwire()
    proxy = await tripwire.start()
    work = home / "work"
    work.mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec(
        *argv(exe, prompt, *extra),
        cwd=work,
        env=cli_env(home, base_url, proxy, **auth),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    finally:
        await tripwire.close()
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    try:
        result = json.loads(stdout)
    except ValueError:
        pytest.fail(f"exit {proc.returncode}, not JSON on stdout: {stdout!r}\nstderr: {stderr}")
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {result.get('result')!r} "
        f"(api_error_status {result.get('api_error_status')})\nstderr: {stderr}"
    )
    return result, stderr, tripwire.seen


def upstream_messages(gw) -> list[list[dict]]:
    """The messages of each completion the upstream got (the gateway's own rendering)."""
    return [json.loads(seen.body)["messages"] for seen in gw.completions_seen()]


def assert_tool_turn_upstream(first: list[dict], second: list[dict]) -> None:
    """Bash was offered in the tool prompt; the call and its result went back in the next."""
    assert any("<tools>" in m["content"] and '"Bash"' in m["content"] for m in first)
    assert not any(OUTPUT in m["content"] for m in first)
    calls = [m for m in second if m["role"] == "assistant" and "<tool_call>" in m["content"]]
    assert calls and "tee greeting.txt" in calls[-1]["content"]
    results = [m for m in second if "<tool_result" in m["content"]]
    assert results and OUTPUT in results[-1]["content"]
    assert second.index(calls[-1]) < second.index(results[-1])


async def test_cli_plain_prompt(gateway, claude_cli, tmp_path):
    gw = await gateway(*BASE, "claude_code_plain")
    result, stderr, proxied = await run_claude(
        claude_cli, tmp_path, gw.url, PLAIN_PROMPT, api_key=API_KEY
    )
    assert result["is_error"] is False, (result, stderr)
    assert result["subtype"] == "success" and result["num_turns"] == 1
    assert result["result"] == PLAIN_ANSWER
    assert proxied == []  # it tried to reach nothing but the gateway
    (sent,) = [json.loads(seen.body) for seen in gw.completions_seen()]
    assert PLAIN_PROMPT in sent["signature_prompt"]
    # the environment Claude Code sends as a mid-conversation role "system" message
    environment = f"Primary working directory: {tmp_path / 'work'}"
    assert any(environment in m["content"] for m in sent["messages"])


async def test_cli_runs_a_tool(gateway, claude_cli, tmp_path):
    gw = await gateway(*BASE, "claude_code_tool")
    result, stderr, proxied = await run_claude(
        claude_cli, tmp_path, gw.url, TOOL_PROMPT, *ALLOW, auth_token=API_KEY
    )
    assert result["is_error"] is False, (result, stderr)
    assert result["subtype"] == "success"
    assert result["num_turns"] == 2 and result["permission_denials"] == []
    assert result["result"] == FINAL_ANSWER
    # Claude Code really ran the command the upstream asked for
    assert (tmp_path / "work" / "greeting.txt").read_text() == OUTPUT + "\n"
    assert proxied == []
    assert_tool_turn_upstream(*upstream_messages(gw))


async def test_cli_runs_a_websearch_turn(gateway, claude_cli, tmp_path):
    """WebSearch: ToolSearch loads the deferred tool, the model calls it, Claude Code sends
    its own search request (the web_search server tool alone), the gateway answers it with
    the upstream's search as server_tool_use + web_search_tool_result, and Claude Code hands
    the results back to the model for the answer."""
    gw = await gateway(*BASE, "claude_code_websearch")
    result, stderr, proxied = await run_claude(
        claude_cli,
        tmp_path,
        gw.url,
        "Search the web for this week's news about Elon Musk and summarise it.",
        "--allowedTools",
        "WebSearch",
        "--max-turns",
        "5",
        auth_token=API_KEY,
    )
    bodies = [json.loads(seen.body) for seen in gw.completions_seen()]
    assert result["is_error"] is False, (result, stderr, [b["messages"][-1] for b in bodies])
    assert result["result"] == SEARCH_ANSWER
    assert proxied == []
    assert len(bodies) == 4
    search = bodies[2]  # Claude Code's own WebSearch request: the upstream searched
    assert search["features"]["auto_web_search"] is True
    assert SEARCH_QUERY in search["signature_prompt"]
    final = json.dumps(bodies[3]["messages"])
    # the results Claude Code got from the gateway's web_search_tool_result went back
    assert "https://news.example.com/tech-roundup" in final
    assert "Starship test flight update" in final


def _fixture(name: str, **changes: object) -> bytes:
    body = json.loads((FIXTURES / f"{name}.request.json").read_text(encoding="utf-8"))
    return json.dumps({**body, **changes}).encode()


async def _post(gw, body: bytes, key_header: str = "x-api-key") -> tuple[str, str]:
    auth = (
        {"x-api-key": API_KEY}
        if key_header == "x-api-key"
        else {"Authorization": f"Bearer {API_KEY}"}
    )
    headers = {
        "Content-Type": "application/json",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        **auth,
    }
    try:
        response = await AsyncHTTPClient().fetch(
            gw.url + "/v1/messages?beta=true",
            method="POST",
            body=body,
            headers=headers,
            request_timeout=20,
        )
    except HTTPClientError as exc:
        detail = exc.response.body.decode() if exc.response else ""
        pytest.fail(f"{exc.code} from the gateway: {detail}")
    return response.headers.get("Content-Type", ""), response.body.decode()


def _events(text: str) -> list[tuple[str, dict]]:
    events = []
    for chunk in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line)
        if "data" in fields:
            data = json.loads(fields["data"])
            assert fields.get("event") == data["type"], chunk
            events.append((data["type"], data))
    return events


def _blocks_from_stream(events: list[tuple[str, dict]]) -> tuple[list[dict], str]:
    """Content blocks as a client rebuilds them from the events, and the stop reason."""
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    blocks: dict[int, dict] = {}
    partial: dict[int, str] = {}
    stop = ""
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif name == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
        elif name == "content_block_stop" and data["index"] in partial:
            blocks[data["index"]]["input"] = json.loads(partial[data["index"]])
        elif name == "message_delta":
            stop = data["delta"]["stop_reason"]
    assert sorted(blocks) == list(range(len(blocks)))
    return [blocks[i] for i in sorted(blocks)], stop


def _answer(blocks: list[dict]) -> tuple[str, list[dict]]:
    text = "".join(b["text"] for b in blocks if b["type"] == "text").strip()
    return text, [b for b in blocks if b["type"] == "tool_use"]


@pytest.mark.parametrize("stream", [True, False])
async def test_recorded_requests_replayed(gateway, stream):
    """The three bodies Claude Code sent (tests/claude_code/*.request.json), as it sent them
    (streamed) and non-streamed, against the same cassettes."""
    gw = await gateway(*BASE, "claude_code_plain", "claude_code_tool")
    answers = []
    for name, key_header in (
        ("plain", "x-api-key"),
        ("tool_use", "authorization"),
        ("tool_result", "authorization"),
    ):
        content_type, text = await _post(gw, _fixture(name, stream=stream), key_header)
        if stream:
            assert content_type.startswith("text/event-stream")
            answers.append(_blocks_from_stream(_events(text)))
        else:
            assert content_type.startswith("application/json")
            message = json.loads(text)
            assert message["type"] == "message" and message["role"] == "assistant"
            assert message["model"] == "claude-opus-5-5"
            answers.append((message["content"], message["stop_reason"]))
    (plain, plain_stop), (call, call_stop), (final, final_stop) = answers
    assert _answer(plain) == (PLAIN_ANSWER, []) and plain_stop == "end_turn"
    text, uses = _answer(call)
    assert text == "I'll run it." and call_stop == "tool_use"
    assert [(u["name"], u["input"]) for u in uses] == [("Bash", BASH_INPUT)]
    assert uses[0]["id"].startswith("toolu_")
    assert _answer(final) == (FINAL_ANSWER, []) and final_stop == "end_turn"
    _, first, second = upstream_messages(gw)
    assert_tool_turn_upstream(first, second)
    for messages in upstream_messages(gw):  # the per-request billing line is not the model's
        system = messages[0]
        assert system["role"] == "system" and "x-anthropic-billing-header" not in str(messages)
        assert system["content"].startswith("You are a Claude agent, built on Anthropic's")
