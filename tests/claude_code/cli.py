"""The real Claude Code CLI, installed pinned from npm and run offline in print mode.

Owns three things the test and the recording script share: ``ensure_cli()`` installs
``@anthropic-ai/claude-code@VERSION`` into ``.venv-tools/claude-code`` when it is missing (npm
first, a Debian ``npm`` package when there is none and we may install it) and returns the native
binary; ``cli_env()`` builds the whole environment the CLI runs with (nothing is inherited but
PATH, so a developer's own Anthropic settings never leak in): a throwaway HOME and config dir,
the gateway as ``ANTHROPIC_BASE_URL``, telemetry, error reporting, auto-update and all
non-essential traffic off, and every proxied request sent to a proxy the caller controls so any
attempt to reach another host is seen; ``argv()`` the print-mode command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.npm_cli import ensure_installed
from tests.npm_cli import machine as npm_machine

ROOT = Path(__file__).resolve().parent.parent.parent
VERSION = "2.1.331"
PACKAGE = "@anthropic-ai/claude-code"
PREFIX = ROOT / ".venv-tools" / "claude-code"
MODULES = PREFIX / "node_modules" / "@anthropic-ai"
INSTALL_TIMEOUT = 900  # the platform package is a ~400 MB native binary


def installed_version() -> str | None:
    try:
        manifest = json.loads((MODULES / "claude-code" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("version")


def binary() -> Path | None:
    """The native executable from the platform package npm picked (no postinstall needed)."""
    machine = npm_machine()
    for pkg in sorted(MODULES.glob(f"claude-code-linux-{machine}*")):
        exe = pkg / "claude"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


def ensure_cli() -> Path:
    """Install the pinned CLI if needed and return its executable."""
    return ensure_installed(
        PACKAGE, VERSION, PREFIX, INSTALL_TIMEOUT, installed_version, binary, "Claude Code CLI"
    )


def cli_env(
    home: Path,
    base_url: str,
    proxy_url: str,
    api_key: str | None = None,
    auth_token: str | None = None,
) -> dict[str, str]:
    """The CLI's whole environment; exactly one of api_key (x-api-key) / auth_token (Bearer)."""
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": base_url,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # anything that still goes out through a proxy lands on the caller's tripwire
        "HTTPS_PROXY": proxy_url,
        "HTTP_PROXY": proxy_url,
        "https_proxy": proxy_url,
        "http_proxy": proxy_url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if api_key:
        env["ANTHROPIC_API_KEY"] = api_key
    if auth_token:
        env["ANTHROPIC_AUTH_TOKEN"] = auth_token
    return env


def argv(exe: Path, prompt: str, *extra: str) -> list[str]:
    return [
        str(exe),
        "-p",
        prompt,
        "--output-format",
        "json",
        "--max-turns",
        "3",
        "--no-session-persistence",
        *extra,
    ]
