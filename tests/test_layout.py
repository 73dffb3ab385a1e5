"""The package's layout holds: the import contracts pass, every module sits in a layer, no module
reads another module's underscore names, and no module outgrows one screenful of concepts."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "manual_bp"
MAX_LINES = 500
TABLES = {"verify/table.py"}
"""Modules that are one table (rows of data), allowed past MAX_LINES."""


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _contracts() -> list[dict]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def test_import_contracts_pass():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (it is in the test extra)")
    run = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_every_top_level_module_sits_in_a_layer():
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    named = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    top = {
        f"manual_bp.{p.stem if p.is_file() else p.name}"
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert top - named == set(), f"modules outside the layers contract: {sorted(top - named)}"


def _private_uses(path: Path) -> list[str]:
    """``from x import _y`` and ``module._y`` where ``module`` is an imported module alias."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                else:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr != "_replace"  # NamedTuple's public API
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_reads_another_modules_underscore_names(path):
    assert _private_uses(path) == []


def test_the_private_name_check_can_fail(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from manual_bp.rules import conv as _conv\n"
        "from manual_bp.grad import _hidden\n"
        "x = _conv._pair\n"
    )
    assert len(_private_uses(planted)) == 2


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_small(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if path.relative_to(SRC).as_posix().removeprefix("manual_bp/") in TABLES:
        return
    assert lines <= MAX_LINES, f"{_module_name(path)} has {lines} lines (at most {MAX_LINES})"
