"""Checkpoints: exact resume, atomic writes, and a clear error for every bad file."""

from __future__ import annotations

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from manual_bp import nn
from manual_bp.data import Dataset
from manual_bp.train import fit, mlp
from manual_bp.train.checkpoint import load_checkpoint, save_checkpoint

DIGITS_TRAIN = 1437  # training examples of the digits split
RNG = np.random.default_rng(0)
DATA = Dataset(
    RNG.standard_normal((96, 6)).astype(np.float32),
    RNG.integers(0, 3, 96).astype(np.int32),
    RNG.standard_normal((24, 6)).astype(np.float32),
    RNG.integers(0, 3, 24).astype(np.int32),
    3,
    "synthetic",
)
NET = mlp((8,), 3, "tanh")
OPT = optax.adam(1e-2)
KEY = jax.random.key(3)


def _params():
    return NET.init(jax.random.key(1), (6,), jnp.float32)


def _train(epochs, **kw):
    return fit(
        NET,
        "softmax_cross_entropy",
        kw.pop("params", _params()),
        DATA,
        optimizer=OPT,
        epochs=epochs,
        batch_size=16,
        key=KEY,
        **kw,
    )


def _equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_resume_is_bit_identical(tmp_path):
    saved = {}

    def keep(epoch, params, opt_state, state):
        saved[epoch] = (params, opt_state)

    straight, history, *_ = _train(4, on_epoch_end=keep)
    path = tmp_path / "ckpt.npz"
    params2, opt2 = saved[2]
    save_checkpoint(path, params=params2, opt_state=opt2, epoch=2, key=KEY, config={"m": "mlp"})
    ck = load_checkpoint(path, params_like=_params(), opt_state_like=OPT.init(_params()))
    assert ck.epoch == 2 and ck.config == {"m": "mlp"}
    assert np.array_equal(jax.random.key_data(ck.key), jax.random.key_data(KEY))
    assert _equal(ck.params, params2) and _equal(ck.opt_state, opt2)
    resumed, rest, *_ = _train(4, params=ck.params, opt_state=ck.opt_state, start_epoch=ck.epoch)
    assert _equal(resumed, straight), "resumed training differs from an uninterrupted run"
    assert [r["train_loss"] for r in rest] == [r["train_loss"] for r in history[2:]]
    assert not _equal(saved[2][0], straight)  # the comparison can fail


def test_resume_with_batch_norm_state_and_dropout_is_bit_identical(tmp_path):
    """The network's state goes into the checkpoint; resuming continues the same statistics
    and the same dropout masks."""
    net = nn.serial(nn.Dense(8), nn.BatchNorm(), nn.Tanh(), nn.Dropout(0.3), nn.Dense(3))
    params = net.init(jax.random.key(1), (16, 6), jnp.float32)
    state0 = net.init_state(jax.random.key(1), (16, 6), jnp.float32)
    saved = {}

    def run(epochs, **kw):
        return fit(net, "softmax_cross_entropy", kw.pop("params", params), DATA,
                   optimizer=OPT, epochs=epochs, batch_size=16, key=KEY, **kw)  # fmt: skip

    straight = run(4, on_epoch_end=lambda e, p, o, s: saved.setdefault(e, (p, o, s)))
    path = tmp_path / "ckpt.npz"
    p2, o2, s2 = saved[2]
    save_checkpoint(path, params=p2, opt_state=o2, epoch=2, key=KEY, config={}, state=s2)
    ck = load_checkpoint(
        path, params_like=params, opt_state_like=OPT.init(params), state_like=state0
    )
    assert _equal(ck.state, s2) and not _equal(ck.state, state0)
    resumed = run(4, params=ck.params, opt_state=ck.opt_state, state=ck.state, start_epoch=2)
    assert _equal(resumed.params, straight.params) and _equal(resumed.state, straight.state)
    with pytest.raises(ValueError, match="different model"):
        load_checkpoint(path, params_like=params, opt_state_like=OPT.init(params))


def _save(path, params=None, epoch=1):
    params = _params() if params is None else params
    save_checkpoint(
        path, params=params, opt_state=OPT.init(params), epoch=epoch, key=KEY, config={}
    )


def _load(path, params=None):
    params = _params() if params is None else params
    return load_checkpoint(path, params_like=params, opt_state_like=OPT.init(params))


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    _save(path, epoch=1)

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, epoch=2)
    monkeypatch.undo()
    assert _load(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"], "temporary file left behind"


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tampered(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["params/dense_0/w"] = arrays["params/dense_0/w"] + np.float32(1e-3)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _not_a_checkpoint(path):
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros(3))


def _garbage(path):
    path.write_bytes(b"not a zip file at all")


def _object_array(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "meta/format.npy",
            b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': "
            b"False, 'shape': (1,), }" + b" " * 50 + b"\n" + b"\x80\x04N.",
        )


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_truncated, "unreadable"),
        (_tampered, "do not match its digest"),
        (_not_a_checkpoint, "not a manual_bp checkpoint"),
        (_garbage, "unreadable"),
        (_object_array, "unreadable|not a manual_bp checkpoint"),
        (lambda p: p.unlink(), "no such file"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, spoil, message):
    path = tmp_path / "ckpt.npz"
    _save(path)
    spoil(path)
    with pytest.raises(ValueError, match=message) as info:
        _load(path)
    assert str(path) in str(info.value)


def test_checkpoint_of_a_different_model(tmp_path):
    path = tmp_path / "ckpt.npz"
    _save(path)
    other = mlp((5,), 3, "tanh").init(jax.random.key(0), (6,), jnp.float32)
    with pytest.raises(ValueError, match="different model"):
        _load(path, params=other)
    deeper = mlp((8, 8), 3, "tanh").init(jax.random.key(0), (6,), jnp.float32)
    with pytest.raises(ValueError, match="different model"):
        _load(path, params=deeper)


def _cli(*args):
    from manual_bp.cli import main

    return main(["train", "--hidden", "16", "--batch-size", "64", *args])


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith(("params/", "opt_state/"))}


def test_cli_resume_equals_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli("--epochs", "3", "--out", str(a)) == 0
    assert _cli("--epochs", "1", "--out", str(b)) == 0
    assert _cli("--epochs", "3", "--out", str(b), "--resume") == 0
    first, second = _arrays(a / "checkpoint.npz"), _arrays(b / "checkpoint.npz")
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    with np.load(b / "checkpoint.npz", allow_pickle=False) as z:
        config = json.loads(z["meta/config"].tobytes().decode())
    assert config["step"] == 3 * (DIGITS_TRAIN // 64) and config["batch_size"] == 64
    lines_a = (a / "metrics.jsonl").read_text().splitlines()
    lines_b = (b / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b) == 3
    for name in ("loss.png", "accuracy.png", "layer_norms.png"):
        assert (b / name).stat().st_size > 1000


def test_plots_skip_the_norm_panels_that_not_every_record_has(tmp_path):
    """Norms of other kinds than the run's (delta, grad, activation), or in some records only,
    give no norm figure, not an error; the loss and accuracy plots are written."""
    from manual_bp.train.report import write_plots

    base = {"train_loss": 1.0, "test_loss": 1.1, "test_accuracy": 0.5}
    other = {**base, "norms": {"other": {"dense": 1.0}}}
    for records in (
        [{"epoch": 1, **other}, {"epoch": 2, **other}],
        [{"epoch": 1, **other}, {"epoch": 2, **base}],
    ):
        written = write_plots(tmp_path, records)
        assert [p.name for p in written] == ["loss.png", "accuracy.png"]
    records = [{"epoch": e, **base, "norms": {"grad": {"dense": 1.0 / e}}} for e in (1, 2)]
    written = write_plots(tmp_path, records)
    assert [p.name for p in written] == ["loss.png", "accuracy.png", "layer_norms.png"]


@pytest.mark.parametrize("variant", ["fa", "kp"])
def test_cli_feedback_matrices_are_checkpointed_and_resume_exactly(tmp_path, variant):
    """Feedback alignment's fixed B lives in the network state, Kolen–Pollack's learned B in
    the params: both go into the checkpoint, and a resumed run equals an uninterrupted one."""
    a, b = tmp_path / "a", tmp_path / "b"
    fb = ("--feedback", variant)
    assert _cli(*fb, "--epochs", "2", "--out", str(a)) == 0
    assert _cli(*fb, "--epochs", "1", "--out", str(b)) == 0
    with np.load(b / "checkpoint.npz", allow_pickle=False) as z:
        after_one = {k: z[k] for k in z.files if "feedback" in k}
    assert _cli(*fb, "--epochs", "2", "--out", str(b), "--resume") == 0
    prefixes = ("params/", "opt_state/", "state/")
    with (
        np.load(a / "checkpoint.npz", allow_pickle=False) as za,
        np.load(b / "checkpoint.npz", allow_pickle=False) as zb,
    ):
        kept = [k for k in za.files if k.startswith(prefixes)]
        assert kept and sorted(kept) == sorted(k for k in zb.files if k.startswith(prefixes))
        for k in kept:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
        where = "state/" if variant == "fa" else "params/"
        feedback = sorted(k for k in za.files if k.startswith(where) and "feedback" in k)
        assert len(feedback) == 2, za.files  # one B per dense layer
        for k in feedback:  # fa: fixed; kp: learned, so it moved
            assert np.array_equal(after_one[k], za[k]) == (variant == "fa"), k


def test_cli_resume_refuses_changed_settings_and_bad_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli("--epochs", "1", "--out", str(out)) == 0
    with pytest.raises(SystemExit) as info:
        _cli("--epochs", "2", "--out", str(out), "--resume", "--lr", "0.01")
    assert info.value.code == 2
    assert "lr=0.001 (now 0.01)" in capsys.readouterr().err
    _truncated(out / "checkpoint.npz")
    with pytest.raises(SystemExit) as info:
        _cli("--epochs", "2", "--out", str(out), "--resume")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        _cli("--epochs", "2", "--out", str(tmp_path / "none"), "--resume")
    assert info.value.code == 2


@pytest.mark.parametrize("model", ["cnn", "gru"])
def test_cli_trains_other_models(tmp_path, model, capsys):
    from manual_bp.cli import main

    out = tmp_path / model
    args = ["train", "--model", model, "--hidden", "8", "--epochs", "1", "--out", str(out)]
    assert main([*args, "--batch-size", "128"]) == 0
    text = capsys.readouterr().out
    assert f"{model} on 8x8" in text and "gradient check, first batch" in text and ": ok" in text
    assert (out / "checkpoint.npz").is_file() and (out / "metrics.jsonl").is_file()
