"""Nothing in the package can execute code from a file, and outputs stay in their folder.

* no pickle (or marshal, shelve, dill), ``eval``, ``exec``, ``compile`` or ``__import__`` in
  ``src/``, and every ``np.load`` passes ``allow_pickle=False``;
* ``manual-bp train``'s default output folder is always inside ``runs/``, whatever the dataset
  spec, and a run writes only inside ``--out``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from manual_bp.cli import _default_out

SRC = Path(__file__).resolve().parent.parent / "src"
FILES = sorted(SRC.rglob("*.py"))

FORBIDDEN_TEXT = re.compile(r"allow_pickle\s*=\s*True|\beval\(|\bexec\(|__import__")
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def test_the_scan_sees_the_package():
    names = {p.name for p in FILES}
    assert {"checkpoint.py", "files.py", "cli.py", "__init__.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_code_execution_from_data(path):
    text = path.read_text(encoding="utf-8")
    hits = [m.group(0) for m in FORBIDDEN_TEXT.finditer(text)]
    assert not hits, f"{path.name}: {hits}"
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            mods = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods = {(node.module or "").split(".")[0]}
        else:
            mods = set()
        assert not mods & FORBIDDEN_MODULES, f"{path.name}:{node.lineno}: imports {mods}"
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            assert name not in FORBIDDEN_MODULES, f"{path.name}:{node.lineno}: uses {name}"
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if isinstance(f, ast.Name):
                assert name not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno}: calls {name}"
            if name == "load" and ast.unparse(f).split(".")[0] in ("np", "numpy", "jnp"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("allow_pickle"), ast.Constant) and (
                    kw["allow_pickle"].value is False
                )
                assert ok, f"{path.name}:{node.lineno}: np.load without allow_pickle=False"


def test_the_scan_can_fail(tmp_path):
    """The same checks flag each kind of unsafe line."""
    bad = {
        "import pickle\n": "imports",
        "from marshal import loads\n": "imports",
        "x = eval('1')\n": "eval(",
        "import numpy as np\nnp.load('f.npy')\n": "allow_pickle",
        "import numpy as np\nnp.load('f.npy', allow_pickle=True)\n": "allow_pickle=True",
        "m = __import__('os')\n": "__import__",
    }
    for source, what in bad.items():
        path = tmp_path / "bad.py"
        path.write_text(source)
        with pytest.raises(AssertionError, match=re.escape(what)):
            test_no_code_execution_from_data(path)


@pytest.mark.parametrize(
    "spec",
    [
        "digits",
        "npz:../../etc/passwd",
        "npz:/abs/path/data.npz",
        "idx:..",
        "idx:some/dir/",
        "idx:/",
        "npz:a\\..\\..\\b.npz",
        "npz:~/x.npz",
        "npz:$HOME/x",
        "idx:.",
    ],
)
def test_default_output_folder_stays_in_runs(spec):
    out = Path(_default_out(spec, "mlp"))
    assert out.parent == Path("runs"), out
    assert out.name not in ("", ".", "..") and ".." not in out.name and "/" not in out.name
    assert (Path("base") / out).resolve().is_relative_to(Path("base").resolve() / "runs")


def test_outputs_replace_symbolic_links_instead_of_writing_through_them(tmp_path):
    """A link planted in the output folder (to a file outside it) is replaced by the new
    output; the file it pointed to is untouched, and no temporary file is left behind."""
    from manual_bp.train.report import write_metrics, write_plots

    out, outside = tmp_path / "run", tmp_path / "precious.txt"
    out.mkdir()
    outside.write_text("keep me")
    names = ("metrics.jsonl", "loss.png", "accuracy.png")
    for name in names:
        (out / name).symlink_to(outside)
    records = [
        {"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.5 / e, "test_accuracy": 0.5}
        for e in (1, 2)
    ]
    write_metrics(out / "metrics.jsonl", records)
    write_plots(out, records)
    assert outside.read_text() == "keep me"
    for name in names:
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
