"""The architecture as import rules: the data flows face -> core -> dialect -> transport.

Each module's imports are read with ``ast`` (no import side effects). A face never imports
another face, the Z.AI dialect never imports the application (settings, faces, routes,
wiring), ``state/`` never imports ``server/``, and the neutral core knows no face.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in [*ROOT.glob("server/**/*.py"), *ROOT.glob("state/**/*.py")]:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[_module(path)] = {n for n in names if n.split(".")[0] in {"server", "state"}}
    return found


IMPORTS = _imports()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _face(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["server", "faces"] else None


# (importer prefix, what it may not import, why)
FORBIDDEN = [
    ("state", ("server",), "state/ is beside the app: it must not import server/"),
    (
        "server.zai",
        (
            "server.settings",
            "server.app",
            "server.services",
            "server.faces",
            "server.web",
            "server.ops",
            "server.credentials",
            "server.emulation",
        ),
        "the dialect is swappable: it takes plain values, not the application",
    ),
    (
        "server.core",
        ("server.faces", "server.web", "server.app", "server.services", "server.ops.admin"),
        "the neutral core knows no face and no route",
    ),
    (
        "server.emulation",
        ("server.faces", "server.web", "server.zai", "server.transport", "server.services"),
        "tool and stop emulation work on neutral text only",
    ),
    ("server.transport", ("server", "state"), "the transport speaks HTTP and nothing else"),
]


def test_every_module_is_seen() -> None:
    assert "server.faces.openai.api" in IMPORTS
    assert "server.zai.client" in IMPORTS
    assert "state.pool" in IMPORTS


@pytest.mark.parametrize("importer,banned,why", FORBIDDEN, ids=[r[0] for r in FORBIDDEN])
def test_layer_does_not_import(importer: str, banned: tuple[str, ...], why: str) -> None:
    broken = sorted(
        f"{module} imports {name}"
        for module, names in IMPORTS.items()
        if _under(module, importer)
        for name in names
        if any(_under(name, b) for b in banned) and not _under(name, importer)
    )
    assert not broken, f"{why}: {broken}"


def test_no_face_imports_another() -> None:
    broken = sorted(
        f"{module} imports {name}"
        for module, names in IMPORTS.items()
        if _face(module)
        for name in names
        if _face(name) and _face(name) != _face(module)
    )
    assert not broken, broken


def test_rules_catch_a_violation() -> None:
    """The checker itself: a made-up face-to-face import is reported."""
    fake = {"server.faces.anthropic.wire": {"server.faces.openai.wire"}}
    assert [m for m, ns in fake.items() for n in ns if _face(n) != _face(m)]
