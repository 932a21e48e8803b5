"""A pinned CLI from the npm registry, installed into ``.venv-tools/`` for the end-to-end tests.

Owns ``machine`` (the platform package suffix npm picks: ``x64``/``arm64``) and
``ensure_installed`` (install ``package@version`` under a prefix unless that version and its
native executable are already there, then return the executable). npm is found on PATH; on a
clean CI machine (Debian, root, ``CI=true``) Debian's npm is installed first, and without npm
the error says how to get it. The Claude Code and Codex CLIs both come this way.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

__all__ = ["ensure_installed", "machine"]


def machine() -> str:
    name = platform.machine().lower()
    return {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(name, name)


def _npm(wanted: str, timeout: float) -> str:
    npm = shutil.which("npm")
    if npm:
        return npm
    # A clean CI machine (Debian, root) may have no Node at all; npm is only needed to fetch
    # the package, the CLI itself is a native binary.
    if os.environ.get("CI") == "true" and shutil.which("apt-get") and os.geteuid() == 0:
        quiet = {"stdout": subprocess.DEVNULL, "timeout": timeout, "check": True}
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "npm"],
            **quiet,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        npm = shutil.which("npm")
    if not npm:
        raise FileNotFoundError(
            f"npm is needed once to install {wanted} into .venv-tools/: Debian/Ubuntu "
            "`apt-get install -y npm`, macOS `brew install node`, or Node.js 18+ from nodejs.org"
        )
    return npm


def ensure_installed(
    package: str,
    version: str,
    prefix: Path,
    timeout: float,
    installed_version: Callable[[], str | None],
    binary: Callable[[], Path | None],
    name: str,
) -> Path:
    """Install ``package@version`` into ``prefix`` if needed and return its executable."""
    exe = binary()
    if installed_version() == version and exe is not None:
        return exe
    prefix.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            _npm(f"the {name} ({package}@{version})", timeout),
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
            f"{package}@{version}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    exe = binary()
    if result.returncode != 0 or installed_version() != version or exe is None:
        raise RuntimeError(
            f"npm install {package}@{version} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return exe
