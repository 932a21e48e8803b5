"""The real Codex CLI against the gateway's Responses face, with a cassette upstream.

The pinned ``@openai/codex`` (installed by npm into ``.venv-tools/codex`` during the run when
missing) runs ``codex exec --json`` as a subprocess, offline: a throwaway HOME and CODEX_HOME
whose config makes the gateway a custom provider (``wire_api = "responses"``), analytics,
update check and plugin sync off, and a tripwire proxy as ``HTTPS_PROXY`` that must see
nothing. It must complete (a) a plain prompt, its thinking shown as reasoning, and (b) a turn
where it really runs the shell command the upstream asks for (``exec_command``) and answers
from its output. The two requests Codex sent were recorded in ``tests/codex/`` (see its
README); they are also replayed here as raw HTTP, streamed and not, so a change in the
gateway's Responses wire shows up even without the CLI.
"""

import asyncio
import json
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from scripts.codex_cassettes import COMMAND, FINAL_ANSWER, PLAIN_ANSWER, PLAIN_THINKING
from tests.codex.cli import INSTALL_TIMEOUT, argv, cli_env, ensure_cli
from tests.conftest import API_KEY
from tests.test_claude_code import Tripwire

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 300)  # the first test may install the CLI

BASE = ("home", "guest_auth")
FIXTURES = Path(__file__).resolve().parent / "codex"
CLI_TIMEOUT = 120
PLAIN_PROMPT = "Reply with a one-line greeting."
TOOL_PROMPT = "Run `echo hello $((6*7)) | tee greeting.txt` and tell me what it printed."
OUTPUT = "hello 42"  # what the command prints: only a real run produces it


@pytest.fixture(scope="session")
def codex_cli() -> Path:
    return ensure_cli()


async def run_codex(exe: Path, home: Path, base_url: str, prompt: str) -> tuple[list, list]:
    """Run ``codex exec --json`` once: (its JSONL events, what the tripwire proxy saw)."""
    tripwire = Tripwire()
    proxy = await tripwire.start()
    work = home / "work"
    work.mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec(
        *argv(exe, prompt),
        cwd=work,
        env=cli_env(home, base_url, proxy, API_KEY),
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
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {stdout}\nstderr: {stderr}"
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["type"] in ("turn.failed", "error")]
    assert not failed, (failed, stderr)
    return events, tripwire.seen


def items(events: list[dict], kind: str) -> list[dict]:
    return [
        e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == kind
    ]


def upstream_messages(gw) -> list[list[dict]]:
    return [json.loads(seen.body)["messages"] for seen in gw.completions_seen()]


async def test_cli_plain_prompt(gateway, codex_cli, tmp_path):
    gw = await gateway(*BASE, "codex_plain")
    events, proxied = await run_codex(codex_cli, tmp_path, gw.url, PLAIN_PROMPT)
    assert [m["text"] for m in items(events, "agent_message")] == [PLAIN_ANSWER]
    assert [r["text"] for r in items(events, "reasoning")] == [PLAIN_THINKING]
    (done,) = [e for e in events if e["type"] == "turn.completed"]
    assert done["usage"]["input_tokens"] == 11020 and done["usage"]["output_tokens"] == 14
    assert proxied == []  # it tried to reach nothing but the gateway
    (messages,) = upstream_messages(gw)
    assert messages[0]["role"] == "system" and "Codex" in messages[0]["content"]
    assert "<tools>" in messages[0]["content"] and '"exec_command"' in messages[0]["content"]
    assert PLAIN_PROMPT in messages[-1]["content"]
    # the environment Codex sends as a user message reached the model too
    assert any(f"<cwd>{tmp_path / 'work'}</cwd>" in m["content"] for m in messages)


async def test_cli_runs_a_shell_command(gateway, codex_cli, tmp_path):
    gw = await gateway(*BASE, "codex_tool")
    events, proxied = await run_codex(codex_cli, tmp_path, gw.url, TOOL_PROMPT)
    (run,) = items(events, "command_execution")
    assert COMMAND in run["command"] and run["exit_code"] == 0
    assert run["aggregated_output"] == OUTPUT + "\n"
    # Codex really ran the command the upstream asked for
    assert (tmp_path / "work" / "greeting.txt").read_text() == OUTPUT + "\n"
    assert [m["text"] for m in items(events, "agent_message")] == ["I'll run it.", FINAL_ANSWER]
    assert proxied == []
    first, second = upstream_messages(gw)
    assert not any(OUTPUT in m["content"] for m in first[1:])
    calls = [m for m in second if m["role"] == "assistant" and "<tool_call>" in m["content"]]
    assert calls and '"name":"exec_command"' in calls[-1]["content"]
    results = [m for m in second if '<tool_result name="exec_command"' in m["content"]]
    assert results and OUTPUT in results[-1]["content"]


def _fixture(name: str, **changes: object) -> bytes:
    body = json.loads((FIXTURES / f"{name}.request.json").read_text(encoding="utf-8"))
    return json.dumps({**body, **changes}).encode()


async def _post(gw, body: bytes) -> tuple[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Authorization": f"Bearer {API_KEY}",
        "originator": "codex_exec",
    }
    try:
        response = await AsyncHTTPClient().fetch(
            gw.url + "/v1/responses", method="POST", body=body, headers=headers, request_timeout=20
        )
    except HTTPClientError as exc:
        detail = exc.response.body.decode() if exc.response else ""
        pytest.fail(f"{exc.code} from the gateway: {detail}")
    # its web_search beside function tools is not offered; its namespace's members are
    assert response.headers["X-Gateway-Tools"] == "not offered: web_search"
    return response.headers.get("Content-Type", ""), response.body.decode()


def _output_of_stream(text: str) -> list[dict]:
    """The output items as Codex reads them: each ``response.output_item.done``, then the
    ``response.completed`` that must end the stream."""
    events = []
    for chunk in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        data = json.loads(fields["data"])
        assert fields["event"] == data["type"]
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == events[-1]["response"]["output"]
    return done


@pytest.mark.parametrize("stream", [True, False])
async def test_recorded_requests_replayed(gateway, stream):
    """The two bodies Codex 0.171.0 sent (tests/codex/*.request.json), streamed as it sent
    them and non-streamed, against the same cassette."""
    gw = await gateway(*BASE, "codex_tool")
    outputs = []
    for name in ("tool_use", "tool_result"):
        content_type, text = await _post(gw, _fixture(name, stream=stream))
        if stream:
            assert content_type.startswith("text/event-stream")
            outputs.append(_output_of_stream(text))
        else:
            assert content_type.startswith("application/json")
            response = json.loads(text)
            assert response["object"] == "response" and response["status"] == "completed"
            outputs.append(response["output"])
    first, second = outputs
    assert [item["type"] for item in first] == ["reasoning", "message", "function_call"]
    assert first[1]["content"][0]["text"] == "I'll run it."
    call = first[2]
    assert call["name"] == "exec_command" and json.loads(call["arguments"]) == {"cmd": COMMAND}
    assert [item["type"] for item in second] == ["reasoning", "message"]
    assert second[1]["content"][0]["text"] == FINAL_ANSWER
    recorded = json.loads(_fixture("tool_result"))["input"]
    (output,) = [item for item in recorded if item["type"] == "function_call_output"]
    _, sent = upstream_messages(gw)
    # the recorded function_call_output went back to the model as a tool result
    head = f'<tool_result name="exec_command" id="{output["call_id"]}">'
    assert any(head in m["content"] and OUTPUT in m["content"] for m in sent)
    # the multi_agent_v1 namespace's tools are offered under their namespace
    system = sent[0]["content"]
    assert '"name":"multi_agent_v1.spawn_agent"' in system and "(multi_agent_v1)" in system
    # the reasoning item Codex sent back is not forwarded (the upstream takes no thinking)
    (thinking,) = [item for item in recorded if item["type"] == "reasoning"]
    assert not any(thinking["summary"][0]["text"] in m["content"] for m in sent)
