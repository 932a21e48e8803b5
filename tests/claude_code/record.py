"""Record what the real Claude Code CLI sends, against the stand-in API in ``recorder.py``.

Runs the pinned CLI (installed if missing) offline in print mode for the two scenarios the test
plays (a plain prompt; a prompt that makes it run ``echo hello $((6*7)) | tee greeting.txt``
with Bash, pre-authorised by ``--allowedTools``), with the recorder as both
``ANTHROPIC_BASE_URL`` and the HTTPS proxy, then writes every request it saw to
``wire.jsonl`` (secrets masked) and the Messages bodies as fixtures: ``plain.request.json``,
``tool_use.request.json`` (the request answered with a tool_use) and
``tool_result.request.json`` (the follow-up carrying the tool_result). The throwaway home
directory is replaced by ``/tmp/claude-code-home`` so the fixtures do not change per run.
Run from the repo root: ``.venv/bin/python -m tests.claude_code.record``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from tests.claude_code.cli import argv, cli_env, ensure_cli
from tests.claude_code.recorder import Recorder

HERE = Path(__file__).resolve().parent
HOME = "/tmp/claude-code-home"
PLAIN = "Reply with a one-line greeting."
# "hello 42" exists only if the command really ran; tee writes a file, so it needs the rules
# (echo alone is read-only and Claude Code would run it unasked)
COMMAND = "echo hello $((6*7)) | tee greeting.txt"
TOOL = f"Run `{COMMAND}` with the Bash tool and tell me what it printed."
ALLOW = ("--allowedTools", "Bash(echo hello $((6*7)))", "Bash(tee greeting.txt)")


def run(exe: Path, log: Path, prompt: str, *extra: str, bearer: bool = False) -> list[dict]:
    log.write_text("")
    Recorder.log_path = str(log)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            (home / "work").mkdir()
            key = "sk-recorder-0123456789"
            env = cli_env(home, url, url, **({"auth_token": key} if bearer else {"api_key": key}))
            done = subprocess.run(
                argv(exe, prompt, *extra),
                cwd=home / "work",
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            print(f"exit {done.returncode}; stderr: {done.stderr.strip()[:500]!r}")
            print("result:", json.loads(done.stdout).get("result") if done.stdout else None)
            text = log.read_text().replace(tmp, HOME)
    finally:
        server.shutdown()
        server.server_close()
    log.write_text(text)
    return [json.loads(line) for line in text.splitlines()]


def main() -> None:
    exe = ensure_cli()
    scratch = Path(tempfile.mkdtemp())
    plain = run(exe, scratch / "plain.jsonl", PLAIN)
    tool = run(exe, scratch / "tool.jsonl", TOOL, *ALLOW, bearer=True)
    with open(HERE / "wire.jsonl", "w", encoding="utf-8") as out:
        for entry in plain + tool:
            out.write(json.dumps({k: v for k, v in entry.items() if k != "body"}) + "\n")
    messages = [e for e in plain + tool if e["path"] == "/v1/messages"]
    others = [e for e in plain + tool if e["path"] != "/v1/messages"]
    print(
        f"{len(messages)} Messages request(s); other requests: "
        f"{[(e['method'], e['path'], e['headers'].get('Host')) for e in others]}"
    )
    assert [len(plain), len(tool)] == [1, 2], (len(plain), len(tool))
    for name, entry in (("plain", plain[0]), ("tool_use", tool[0]), ("tool_result", tool[1])):
        target = HERE / f"{name}.request.json"
        target.write_text(
            json.dumps(entry["body"], indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(
            f"{target.relative_to(HERE.parent.parent)}: {entry['body']['model']}, "
            f"{len(entry['body']['messages'])} message(s)"
        )


if __name__ == "__main__":
    main()
