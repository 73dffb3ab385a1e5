"""The package a user installs: ``python -m build`` makes a wheel and an sdist, the wheel goes
into a fresh virtual environment (not editable), and from a folder outside the checkout
``manual-bp`` runs and every public module imports.

The fresh environment finds the wheel's dependencies in this environment's site-packages
(a path line in a ``.pth`` file: the directory is searched after its own, and the editable
install's own ``.pth`` hooks there are not run), instead of installing JAX a second time.
That every dependency is declared is checked directly: each third-party package the
installed modules import belongs to a distribution named in the wheel's ``Requires-Dist``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import public_api

ROOT = Path(__file__).resolve().parents[1]
# One worker builds the wheel and installs it, for all of the module's tests.
pytestmark = [pytest.mark.slow, pytest.mark.together("wheel")]


def run(*argv, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("build", reason="the docs extra (pip install -e '.[docs]')")
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=ROOT)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(dist.iterdir())
    env = tmp_path_factory.mktemp("venv") / "fresh"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheels[0], cwd=dist)
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=dist
    )
    deps = Path(purelib.stdout.strip()) / "dependencies.pth"
    deps.write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path_factory.mktemp("outside")
    return env / "bin", outside


def test_the_wheel_holds_no_checkout_paths(installed):
    bin_, outside = installed
    proc = run(bin_ / "python", "-c", "import manual_bp; print(manual_bp.__file__)", cwd=outside)
    assert str(ROOT) not in proc.stdout and "site-packages" in proc.stdout


def test_the_command_runs_outside_the_checkout(installed):
    bin_, outside = installed
    version = run(bin_ / "manual-bp", "--version", cwd=outside).stdout
    assert version.startswith("manual-bp ") and "unknown" not in version
    train = run(bin_ / "manual-bp", "train", "--epochs", "1", "--out", "run", cwd=outside)
    assert "gradient check" in train.stdout and (outside / "run" / "checkpoint.npz").exists()
    verify = run(bin_ / "manual-bp", "verify", "--rule", "sigmoid", cwd=outside)
    assert "sigmoid" in verify.stdout
    argv = ["bench", "--tiny", "--models", "tiny_mlp", "--no-torch", "--no-numpy"]
    bench = run(bin_ / "manual-bp", *argv, cwd=outside)
    assert "manual / jax.grad" in bench.stdout


def test_every_public_module_imports(installed):
    bin_, outside = installed
    code = f"import importlib; [importlib.import_module(m) for m in {public_api.PUBLIC_MODULES!r}]"
    run(bin_ / "python", "-c", code, cwd=outside)


IMPORTS = """
import ast, importlib.metadata as md, json, pathlib, re, sys
import manual_bp, reference
dists = md.packages_distributions()
found = {}
for package in (manual_bp, reference):
    for path in pathlib.Path(package.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("manual_bp", "reference"):
                    continue
                for dist in dists.get(top, [top]):
                    found.setdefault(dist, str(path.name))
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
declared = {norm(re.split(r"[ ;<>=!~\\[(]", r)[0]) for r in md.requires("manual_bp") or []}
print(json.dumps({d: f for d, f in found.items() if norm(d) not in declared}))
"""


def test_every_imported_package_is_a_declared_dependency(installed):
    bin_, outside = installed
    proc = run(bin_ / "python", "-c", IMPORTS, cwd=outside)
    undeclared = json.loads(proc.stdout.strip().splitlines()[-1])
    assert undeclared == {}, f"imported but not in the wheel's Requires-Dist: {undeclared}"
