"""House rules that are not style: the types check, every docstring example runs,
``__all__`` is true, and no local environment is committed.

Every module of ``server/`` and ``state/`` is imported; its ``>>>`` examples run with
doctest (an example that cannot run is written as a plain ``Usage::`` block instead), and
every name its ``__all__`` lists exists, so ``from module import *`` and readers can trust it.
"""

import doctest
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in [*ROOT.glob("server/**/*.py"), *ROOT.glob("state/**/*.py")]
    if p.name not in {"__init__.py", "__main__.py"}
)


@pytest.mark.timeout(180)
def test_types_check() -> None:
    """mypy, strict on server/ and state/ (``[tool.mypy]`` in pyproject.toml). A test, not a
    step of ./run alone, so every targeted run with this file checks the types too."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_only_real_names(name: str) -> None:
    module = importlib.import_module(name)
    listed = getattr(module, "__all__", [])
    missing = [n for n in listed if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def test_examples_are_found() -> None:
    """The check itself: the answer text's example is collected and run."""
    module = importlib.import_module("server.zai.text")
    assert doctest.testmod(module).attempted > 0


def test_no_environment_or_outside_link_is_tracked() -> None:
    """A worktree's ``.venv`` link once slipped into a commit: merged into the shared checkout
    it replaced the (ignored) virtualenv directory with a link to itself. No tracked path is a
    ``.venv``, and no tracked link points outside the repository."""
    staged = subprocess.run(
        ["git", "ls-files", "--stage"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    paths = [line.split("\t", 1)[1] for line in staged]
    assert paths, "git ls-files listed nothing"
    assert [p for p in paths if ".venv" in pathlib.PurePath(p).parts] == []
    links = [line.split("\t", 1)[1] for line in staged if line.startswith("120000")]
    outside = [p for p in links if not (ROOT / p).resolve().is_relative_to(ROOT)]
    assert outside == []
