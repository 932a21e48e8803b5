"""The real Codex CLI, installed pinned from npm and run offline with ``codex exec``.

Owns what the test needs to run it: ``ensure_cli()`` installs ``@openai/codex@VERSION`` into
``.venv-tools/codex`` when it is missing (npm found as for the Claude Code CLI: a Debian
``npm`` package under ``CI=true`` when there is none) and returns the native binary of the
platform package npm picked; ``cli_env()`` builds the whole environment it runs with (nothing
inherited but PATH, so a developer's own Codex or OpenAI settings never leak in): a throwaway
HOME and ``CODEX_HOME`` whose ``config.toml`` makes the gateway a custom model provider
(``wire_api = "responses"``, key from ``ZAI_GATEWAY_KEY``, no retries), turns off analytics,
the update check and the plugin/app sync (which otherwise reaches github.com and
chatgpt.com), and sends every proxied request to a proxy the caller controls, so any attempt
to reach another host is seen; ``argv()`` the ``codex exec --json`` command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.npm_cli import ensure_installed
from tests.npm_cli import machine as npm_machine

ROOT = Path(__file__).resolve().parent.parent.parent
VERSION = "0.171.0"
PACKAGE = "@openai/codex"
PREFIX = ROOT / ".venv-tools" / "codex"
MODULES = PREFIX / "node_modules" / "@openai"
INSTALL_TIMEOUT = 900  # the platform package is a ~400 MB native binary
MODEL = "GLM-4.7"
KEY_ENV = "ZAI_GATEWAY_KEY"
CONFIG = """\
model = "{model}"
model_provider = "zai-gateway"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false

[model_providers.zai-gateway]
name = "zai-gateway"
base_url = "{base_url}/v1"
env_key = "{key_env}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def installed_version() -> str | None:
    try:
        manifest = json.loads((MODULES / "codex" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("version")


def binary() -> Path | None:
    """The native executable of the platform package (the launcher script only finds it)."""
    machine = npm_machine()
    for exe in sorted(MODULES.glob(f"codex-linux-{machine}/vendor/*/bin/codex")):
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


def ensure_cli() -> Path:
    """Install the pinned CLI if needed and return its executable."""
    return ensure_installed(
        PACKAGE, VERSION, PREFIX, INSTALL_TIMEOUT, installed_version, binary, "Codex CLI"
    )


def cli_env(home: Path, base_url: str, proxy_url: str, api_key: str) -> dict[str, str]:
    """The CLI's whole environment, its config.toml written under ``home``."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    config = CONFIG.format(model=MODEL, base_url=base_url, key_env=KEY_ENV)
    (codex_home / "config.toml").write_text(config, encoding="utf-8")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        KEY_ENV: api_key,
        # anything that still goes out through a proxy lands on the caller's tripwire
        "HTTPS_PROXY": proxy_url,
        "HTTP_PROXY": proxy_url,
        "https_proxy": proxy_url,
        "http_proxy": proxy_url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def argv(exe: Path, prompt: str) -> list[str]:
    # The bypass runs the one command the cassette asks for without a sandbox: Codex's
    # bubblewrap sandbox needs user namespaces, which CI containers often lack.
    return [
        str(exe),
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        prompt,
    ]
