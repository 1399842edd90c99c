"""The package's shape: which subpackage may import which (DESIGN.md, Layout), that every
module says its job and stays small, and that the client brings no server into a caller."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "augur"
MAX_LINES = 400
# What each part of augur/ may import of augur (itself always). None: no restriction.
MAY_IMPORT: dict[str, set[str] | None] = {
    "__init__": set(),
    "config": set(),
    "logs": set(),
    "api": {"api"},
    "features": {"config", "logs", "api", "features"},
    "modelrepo": {"config", "logs", "modelrepo"},
    "client": {"api", "client"},
    "serving": None,  # checked by MAY_NOT_IMPORT
    "pipelines": None,
    "cli": None,
}
MAY_NOT_IMPORT = {
    "serving": {"pipelines", "cli", "client"},
    "pipelines": {"serving", "cli", "client"},
}
OUTSIDE = ("bench", "tests", "examples")
# The one module that reaches outside the package: `augur demo` runs the example.
OUTSIDE_ALLOWED = {("augur/cli/main.py", "examples")}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_pb2" not in p.name)


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported(path: Path) -> set[str]:
    """Top-level names this module imports, anywhere in it (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _augur_parts(names: set[str]) -> set[str]:
    return {n.split(".")[1] for n in names if n.startswith("augur.") and n.count(".") >= 1}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_arrows(path):
    part = _part(path)
    names = _imported(path)
    parts = _augur_parts(names) - {part, "__init__"}
    allowed = MAY_IMPORT[part]
    where = path.relative_to(ROOT)
    if allowed is not None:
        assert parts <= allowed, f"{where} imports augur.{sorted(parts - allowed)}"
    forbidden = MAY_NOT_IMPORT.get(part, set())
    assert not parts & forbidden, f"{where} imports augur.{sorted(parts & forbidden)}"
    for outside in OUTSIDE:
        if (str(where), outside) in OUTSIDE_ALLOWED:
            continue
        assert not any(n == outside or n.startswith(outside + ".") for n in names), (
            f"{where} imports {outside}"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_its_job_and_stays_small(path):
    where = str(path.relative_to(ROOT))
    text = path.read_text()
    if text.strip():  # an empty __init__.py has nothing to explain
        assert ast.get_docstring(ast.parse(text)), f"{where} has no module docstring"
    lines = len(text.splitlines())
    assert lines <= MAX_LINES, f"{where} is {lines} lines; split it (limit {MAX_LINES})"


def test_importing_the_client_brings_no_server_code_or_metrics():
    probe = (
        "import json, sys\n"
        "import augur.client\n"
        "from augur.client import AdminClient, PredictorClient, encode_entities\n"
        "import augur.client.client\n"
        "from prometheus_client import REGISTRY\n"
        "ours = lambda names: sorted(n for n in names if n.startswith('augur'))\n"
        "print(json.dumps({'modules': ours(sys.modules),\n"
        "  'metrics': ours(REGISTRY._names_to_collectors)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(out.stdout)
    server = [
        m
        for m in loaded["modules"]
        if m.startswith(("augur.serving", "augur.features", "augur.config"))
    ]
    assert server == [], f"importing augur.client loaded {server}"
    assert loaded["metrics"] == [], f"importing augur.client registered {loaded['metrics']}"
