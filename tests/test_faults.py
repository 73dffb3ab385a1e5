"""Faults on real ``manual-bp train`` processes: SIGKILL during a checkpoint write, SIGINT,
``--resume`` after both, and truncated or tampered files.

The kill lands during a checkpoint write deterministically: a run started with a delay is the
command run by a small driver (``python -c``) that first wraps ``os.replace`` in that child
process, so that renaming a temporary file onto ``checkpoint.npz`` pauses before the rename.
The test signals the process while the written, not yet renamed, temporary file exists.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from manual_bp.train import mlp
from manual_bp.train.checkpoint import load_checkpoint, save_checkpoint

TRAIN = ["train", "--hidden", "16", "--epochs", "3", "--batch-size", "64"]
DELAY = 1.5  # seconds the driver holds each checkpoint write open
TIMEOUT = 120.0

DELAYED = """
import os, sys, time
rename = os.replace
def replace(src, dst, *args, **kwargs):  # a checkpoint write pauses before its rename
    if os.path.basename(os.fspath(dst)) == "checkpoint.npz":
        time.sleep({delay})
    return rename(src, dst, *args, **kwargs)
os.replace = replace
from manual_bp.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""The driver of a delayed run: ``manual-bp`` with every checkpoint rename held back."""


def _command(delay: float | None) -> list[str]:
    if delay is not None:
        return [sys.executable, "-c", DELAYED.format(delay=float(delay))]
    script = Path(sys.executable).with_name("manual-bp")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from manual_bp.cli import main; sys.exit(main())"]


def _start(cwd: Path, name: str, args: list[str], delay: float | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*_command(delay), *args],
        cwd=cwd,
        stdout=open(cwd / f"{name}.out", "wb"),  # noqa: SIM115 (closed with the process)
        stderr=open(cwd / f"{name}.err", "wb"),  # noqa: SIM115
    )
    proc.log_name = name  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, cwd: Path) -> tuple[int, str, str]:
    try:
        code = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    name = proc.log_name  # type: ignore[attr-defined]
    out = (cwd / f"{name}.out").read_text(errors="replace")
    return code, out, (cwd / f"{name}.err").read_text(errors="replace")


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.glob(".checkpoint.npz.*.tmp"))


def _wait_for_a_write(proc: subprocess.Popen, out: Path, cwd: Path, *, after_first: bool):
    """Block until a checkpoint write is in progress (a new temporary file exists); with
    ``after_first``, one that replaces an existing checkpoint."""
    stale = set(_temporaries(out))
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            code, stdout, stderr = _finish(proc, cwd)
            pytest.fail(f"the run ended (exit {code}) before the write:\n{stdout}\n{stderr}")
        if set(_temporaries(out)) - stale and (
            not after_first or (out / "checkpoint.npz").is_file()
        ):
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint write seen")


def _templates():
    params = mlp((16,), 10, "relu").init(jax.random.key(0), (64, 64), jnp.float32)
    return params, optax.adam(1e-3).init(params)


def _load(path: Path):
    params, opt_state = _templates()
    return load_checkpoint(path, params_like=params, opt_state_like=opt_state)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("params/", "opt_state/"))}


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.slow
def test_sigkill_and_sigint_during_writes_then_resume_equals_an_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    reference = _start(tmp_path, "ref", [*TRAIN, "--out", str(ref_dir)])

    # 1. SIGKILL while the epoch-2 checkpoint is half-way (temporary file written, not renamed).
    killed = _start(tmp_path, "killed", [*TRAIN, "--out", str(run_dir)], delay=DELAY)
    _wait_for_a_write(killed, run_dir, tmp_path, after_first=True)
    killed.send_signal(signal.SIGKILL)
    code, _, _ = _finish(killed, tmp_path)
    assert code == -signal.SIGKILL
    assert _temporaries(run_dir), "the kill did not land during a write"
    assert _load(run_dir / "checkpoint.npz").epoch == 1  # the previous checkpoint is intact

    # 2. --resume, then SIGINT during its first write (epoch 2): that write completes first.
    resumed = _start(tmp_path, "interrupted", [*TRAIN, "--out", str(run_dir), "--resume"], DELAY)
    _wait_for_a_write(resumed, run_dir, tmp_path, after_first=False)
    resumed.send_signal(signal.SIGINT)
    code, stdout, stderr = _finish(resumed, tmp_path)
    assert code == 130, stdout + stderr
    line = _one_line(stderr)
    assert "interrupted" in line and "holds epoch 2 of 3" in line and "--resume" in line
    assert _load(run_dir / "checkpoint.npz").epoch == 2
    assert not _temporaries(run_dir), "a temporary file was left behind"

    # 3. --resume to the end: bit-identical to the uninterrupted run.
    final = _start(tmp_path, "final", [*TRAIN, "--out", str(run_dir), "--resume"])
    code, stdout, stderr = _finish(final, tmp_path)
    assert code == 0, stdout + stderr
    code, stdout, stderr = _finish(reference, tmp_path)
    assert code == 0, stdout + stderr
    want, got = _arrays(ref_dir / "checkpoint.npz"), _arrays(run_dir / "checkpoint.npz")
    assert want.keys() == got.keys()
    differ = [k for k in want if not np.array_equal(want[k], got[k])]
    assert not differ, f"resumed run differs from the uninterrupted one in {differ}"
    epochs = [json.loads(r)["epoch"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    # every output went to the chosen folders (the runs' working directory got nothing else)
    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} == {"ref", "run"}


def _checkpoint(path: Path) -> None:
    params, opt_state = _templates()
    save_checkpoint(
        path, params=params, opt_state=opt_state, epoch=1, key=jax.random.key(0), config={}
    )


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tamper_checkpoint(path: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["params/dense_0/w"] = arrays["params/dense_0/w"] * np.float32(1.001)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _idx_folder(folder: Path, spoil: str) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    parts = {
        "train-images-idx3-ubyte": (0x803, rng.integers(0, 256, (30, 4, 4), dtype=np.uint8)),
        "train-labels-idx1-ubyte": (0x801, rng.integers(0, 10, 30, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": (0x803, rng.integers(0, 256, (10, 4, 4), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": (0x801, rng.integers(0, 10, 10, dtype=np.uint8)),
    }
    for name, (magic, a) in parts.items():
        raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
        raw += a.tobytes()
        if name == "train-images-idx3-ubyte" and spoil == "truncated":
            raw = raw[:-7]
        if name == "train-labels-idx1-ubyte" and spoil == "magic":
            raw = (0x803).to_bytes(4, "big") + raw[4:]
        (folder / name).write_bytes(raw)


def _npz(path: Path, spoil: str) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    with open(path, "wb") as f:
        np.savez(f, x=x, y=y)
    if spoil == "truncated":
        _truncate(path)
    if spoil == "pickle":  # a pickled object array where the labels belong
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"label": 1}] * 40, dtype=object), allow_pickle=True)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", _npy(x))
            z.writestr("y.npy", buffer.getvalue())


def _npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


@pytest.mark.slow
def test_bad_files_exit_2_with_one_line_naming_the_file(tmp_path):
    cases = {}
    for spoil in ("truncated", "tampered"):
        run = tmp_path / f"ckpt-{spoil}"
        run.mkdir()
        _checkpoint(run / "checkpoint.npz")
        (_truncate if spoil == "truncated" else _tamper_checkpoint)(run / "checkpoint.npz")
        problem = "unreadable" if spoil == "truncated" else "do not match its digest"
        cases[f"checkpoint {spoil}"] = (
            ["--out", str(run), "--resume"],
            str(run / "checkpoint.npz"),
            problem,
        )
    for spoil, problem in (
        ("truncated", "truncated: the header's dimensions"),
        ("magic", "bad IDX magic number"),
    ):
        folder = tmp_path / f"idx-{spoil}"
        _idx_folder(folder, spoil)
        cases[f"idx {spoil}"] = (["--dataset", f"idx:{folder}"], str(folder), problem)
    for spoil, problem in (
        ("truncated", "not an .npz archive|cannot read"),
        ("pickle", "object array"),
    ):
        path = tmp_path / f"{spoil}.npz"
        _npz(path, spoil)
        cases[f"npz {spoil}"] = (["--dataset", f"npz:{path}"], str(path), problem)

    unused = ["--out", str(tmp_path / "o")]
    procs = {  # all at once: each spends most of its time importing
        name: _start(tmp_path, name.replace(" ", "-"), [*TRAIN, *unused, *args])
        for name, (args, _, _) in cases.items()
    }
    failures = []
    for name, proc in procs.items():
        code, _, stderr = _finish(proc, tmp_path)
        _, where, problem = cases[name]
        lines = [line for line in stderr.splitlines() if line.strip()]
        ok = (
            code == 2
            and len(lines) == 1
            and "Traceback" not in stderr
            and lines[0].startswith("manual-bp train: error: ")
            and where in lines[0]
            and any(p in lines[0] for p in problem.split("|"))
        )
        if not ok:
            failures.append(f"{name}: exit {code}\n{stderr}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "o").exists(), "a refused run created its output folder"
