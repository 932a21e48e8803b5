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
import platform
import shutil
import subprocess
from pathlib import Path

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
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    for pkg in sorted(MODULES.glob(f"claude-code-linux-{machine}*")):
        exe = pkg / "claude"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


def _npm() -> str:
    npm = shutil.which("npm")
    if npm:
        return npm
    # A clean CI machine (Debian, root) may have no Node at all; npm is only needed to fetch
    # the package, the CLI itself is a native binary.
    if os.environ.get("CI") == "true" and shutil.which("apt-get") and os.geteuid() == 0:
        quiet = {"stdout": subprocess.DEVNULL, "timeout": INSTALL_TIMEOUT, "check": True}
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "npm"],
            **quiet,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        npm = shutil.which("npm")
    if not npm:
        raise FileNotFoundError(
            f"npm is needed once to install the Claude Code CLI ({PACKAGE}@{VERSION}) into "
            ".venv-tools/: Debian/Ubuntu `apt-get install -y npm`, macOS `brew install node`, "
            "or Node.js 18+ from nodejs.org"
        )
    return npm


def ensure_cli() -> Path:
    """Install the pinned CLI if needed and return its executable."""
    exe = binary()
    if installed_version() == VERSION and exe is not None:
        return exe
    PREFIX.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            _npm(),
            "install",
            "--prefix",
            str(PREFIX),
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
            f"{PACKAGE}@{VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    exe = binary()
    if result.returncode != 0 or installed_version() != VERSION or exe is None:
        raise RuntimeError(
            f"npm install {PACKAGE}@{VERSION} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return exe


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
