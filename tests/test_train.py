"""Training loop, digits data and the ``manual-bp train`` command."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reference
from _compare import assert_close
from manual_bp import nn
from manual_bp.cli import main
from manual_bp.data import Dataset, load_digits
from manual_bp.rules import softmax_cross_entropy
from manual_bp.train import build_model, fit, mlp, verify_gradients
from manual_bp.verify import tolerance_for

LOSS = "softmax_cross_entropy"
SHORT = {"epochs": 3, "batch_size": 64}


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """CLI runs write their outputs (runs/...) under a temporary folder, never the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def _net_and_params(hidden=(16,), seed=0, num_classes=10):
    net = mlp(hidden, num_classes, "tanh")
    params = net.init(jax.random.key(seed), (64,), jnp.float32)
    return net, params


def _short_fit(digits, grad_fn=None, seed=0):
    net, params = _net_and_params(seed=seed)
    return fit(
        net,
        LOSS,
        params,
        digits,
        optimizer=optax.adam(1e-2),
        key=jax.random.key(seed + 1),
        grad_fn=grad_fn,
        **SHORT,
    )


@pytest.fixture(scope="module")
def short_run(digits):
    return _short_fit(digits)


# --- data -------------------------------------------------------------------------------


def test_load_digits_split_and_normalization(digits):
    n_train, n_test = len(digits.y_train), len(digits.y_test)
    assert (n_train, n_test) == (1437, 360)
    assert digits.x_train.shape == (n_train, 64) and digits.x_test.shape == (n_test, 64)
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int32 and digits.y_test.dtype == np.int32
    assert (digits.num_classes, digits.name) == (10, "digits")
    # stratified: every class in the test split in proportion to the whole
    counts = np.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # standardized with the training split's statistics only
    np.testing.assert_allclose(digits.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert np.all(digits.x_train.std(axis=0) <= 1.0 + 1e-5)
    assert np.all(np.isfinite(digits.x_test)) and np.abs(digits.x_test).max() < 100


def test_load_digits_is_deterministic_by_seed(digits):
    again, other = load_digits(seed=0), load_digits(seed=1)
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    assert not np.array_equal(other.y_train, digits.y_train)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"seed": 1.5}, "seed must be a non-negative int"),
        ({"test_fraction": 0.0}, r"test_fraction must be a number in \(0, 1\)"),
        ({"test_fraction": 1.0}, r"test_fraction must be a number in \(0, 1\)"),
        ({"test_fraction": 0.001}, "at least 10"),
    ],
)
def test_load_digits_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits(**kwargs)


# --- mlp ----------------------------------------------------------------------------------


def test_mlp_structure():
    net = mlp((32, 16), 10, "gelu")
    assert [layer.name for layer in net.children] == [
        "dense_0",
        "gelu_1",
        "dense_2",
        "gelu_3",
        "dense_4",
    ]
    params = net.init(jax.random.key(0), (64,), jnp.float32)
    assert params["dense_4"]["w"].shape == (16, 10)
    assert params["dense_0"]["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (((16,), 10, "swish"), ValueError, "unknown activation 'swish'; choose one of: sigmoid"),
        (((0,), 10), ValueError, "hidden sizes must be positive ints"),
        (("16", 10), TypeError, "hidden must be a sequence of ints"),
        (((16,), 0), ValueError, "num_classes must be a positive int"),
    ],
)
def test_mlp_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        mlp(*args)


# --- fit ----------------------------------------------------------------------------------


def test_fit_improves_test_loss(digits, short_run):
    net, params = _net_and_params()
    out, _ = net.forward(params, jnp.asarray(digits.x_test))
    initial = float(softmax_cross_entropy(out, jnp.asarray(digits.y_test)))
    history = short_run.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds"}
    losses = [h["test_loss"] for h in history]
    assert losses[-1] < losses[0] < initial
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.8


def test_fit_is_deterministic(digits, short_run):
    params, history = short_run.params, short_run.history
    again, history_again, *_ = _short_fit(digits)
    assert jax.tree.structure(again) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in history_again]


def test_fit_manual_and_reference_gradients_train_alike(digits, short_run):
    manual = short_run.history
    ref = _short_fit(digits, grad_fn=reference.value_and_grad).history
    for m, r in zip(manual, ref, strict=True):
        assert m["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4)
        assert m["test_loss"] == pytest.approx(r["test_loss"], rel=1e-4)
        assert m["test_accuracy"] == pytest.approx(r["test_accuracy"], abs=1.5 / 360)


@pytest.mark.parametrize(
    ("epochs", "batch_size", "match"),
    [
        (-1, 8, "epochs must be a non-negative int"),
        (1, 0, "batch_size must be a positive int"),
        (1, 5000, r"batch_size 5000 is larger than the training set \(1437"),
    ],
)
def test_fit_rejects_bad_counts(digits, epochs, batch_size, match):
    net, params = _net_and_params()
    with pytest.raises(ValueError, match=match):
        fit(
            net,
            LOSS,
            params,
            digits,
            optimizer=optax.adam(1e-3),
            epochs=epochs,
            batch_size=batch_size,
            key=jax.random.key(0),
        )


def test_fit_carries_batch_norm_state_and_dropout_keys(digits):
    """LeNet with batch norm and dropout: the manual and the jax.grad loops train alike, the
    running statistics move away from (0, 1) and agree, and evaluation uses them. In float64:
    two float32 trajectories drift apart by rounding over 44 Adam steps (running means 3.5 %
    apart were seen), which says nothing about the rules; in float64 they agree to ~1e-15 and
    are held to the network tolerance."""
    net, data = build_model("cnn", digits, hidden=(16,), dropout=0.3)
    as64 = {k: np.asarray(getattr(data, k), np.float64) for k in ("x_train", "x_test")}
    data = data._replace(**as64)
    params = net.init(jax.random.key(0), (64, 8, 8, 1), jnp.float64)
    tol = tolerance_for(jnp.float64, "network")

    def run(grad_fn=None):
        return fit(
            net,
            LOSS,
            params,
            data,
            optimizer=optax.adam(1e-2),
            epochs=2,
            batch_size=64,
            key=jax.random.key(1),
            grad_fn=grad_fn,
        )

    manual, ref = run(), run(reference.value_and_grad)
    for m, r in zip(manual.history, ref.history, strict=True):
        assert m["train_loss"] == pytest.approx(r["train_loss"], rel=tol)
        assert m["test_accuracy"] == pytest.approx(r["test_accuracy"], abs=1.5 / 360)
    assert manual.history[-1]["test_accuracy"] > 0.7
    for bn in ("batch_norm_1", "batch_norm_5"):
        mean, var = manual.state[bn]["mean"], manual.state[bn]["var"]
        assert mean.dtype == jnp.float64
        assert np.all(np.asarray(mean) != 0) and np.all(np.asarray(var) != 1)
        for got, want in ((mean, ref.state[bn]["mean"]), (var, ref.state[bn]["var"])):
            assert_close(got, want, jnp.float64, f"{bn} running statistics", tol=tol)


@pytest.mark.bitwise
def test_fit_taps_record_the_norms_of_the_step_itself(digits):
    """One full-batch step per epoch: the recorded norms are those of that step's delta,
    gradient and layer outputs, recomputed here from the reference's jax.grad and a numpy
    forward pass; recording them changes nothing in the training."""
    x, y = np.asarray(digits.x_train[:200], np.float64), np.asarray(digits.y_train[:200])
    data = Dataset(x, y, x[:20], y[:20], 10, "digits-200")
    net = mlp((12,), 10, "tanh")
    params = net.init(jax.random.key(0), (200, 64), jnp.float64)
    run = dict(optimizer=optax.sgd(0.1), epochs=1, batch_size=200, key=jax.random.key(1))
    with_taps = fit(net, LOSS, params, data, taps=True, **run)
    without = fit(net, LOSS, params, data, **run)
    for a, b in zip(
        jax.tree.leaves(with_taps.params), jax.tree.leaves(without.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    norms = with_taps.history[0]["norms"]
    _, grads, deltas = reference.value_grad_and_deltas(net, LOSS)(params, jnp.asarray(x), y)
    p = jax.tree.map(np.asarray, params)
    h = np.tanh(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
    outputs = {
        "dense_0": np.arctanh(h),
        "tanh_1": h,
        "dense_2": h @ p["dense_2"]["w"] + p["dense_2"]["b"],
    }
    per_example = lambda a: float(np.mean(np.linalg.norm(np.reshape(a, (len(a), -1)), axis=1)))  # noqa: E731
    assert set(norms["delta"]) == set(norms["activation"]) == set(outputs)
    for name in outputs:
        assert norms["delta"][name] == pytest.approx(
            per_example(np.asarray(deltas[name])), rel=1e-5
        )
        assert norms["activation"][name] == pytest.approx(per_example(outputs[name]), rel=1e-5)
    for name in ("dense_0", "dense_2"):
        total = np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in grads[name].values()))
        assert norms["grad"][name] == pytest.approx(total, rel=1e-5)
    with pytest.raises(ValueError, match="taps come from the handwritten backward"):
        fit(net, LOSS, params, data, taps=True, grad_fn=reference.value_and_grad, **run)


# --- verify_gradients ---------------------------------------------------------------------


def test_verify_gradients_agrees_and_catches_a_wrong_backward(digits):
    net, params = _net_and_params()
    x, y = jnp.asarray(digits.x_train[:32]), jnp.asarray(digits.y_train[:32])
    good = verify_gradients(net, LOSS, params, x, y)
    assert good["ok"] and good["max_rel_error"] < 1e-4 and good["dtype"] == "float32"
    assert good["num_compared"] == 1 + 4 + 3  # loss, (w, b) x 2, 3 layer deltas

    dense = net.children[0]

    def off_by_two_percent(p, tape, dz):
        grads, deltas, dx = dense.backward(p, tape, dz)
        return {"w": 1.02 * grads["w"], "b": grads["b"]}, deltas, dx

    broken = nn.serial(dense._replace(backward=off_by_two_percent), *net.children[1:])
    bad = verify_gradients(broken, LOSS, params, x, y)
    assert not bad["ok"]
    assert bad["worst"] == "grads/dense_0/w"
    assert bad["max_rel_error"] == pytest.approx(0.02, rel=1e-3)


# --- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["train", "--batch-size", "-4"], "argument --batch-size"),
        (["train", "--lr", "0"], "argument --lr: expected a positive number"),
        (["train", "--lr", "nan"], "argument --lr: expected a positive number"),
        (["train", "--hidden", "128,x"], "argument --hidden: expected comma-separated"),
        (["train", "--hidden", ""], "argument --hidden"),
        (["train", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice"),
        (["train", "--batch-size", "100000"], "100000 is larger than the training set (1437"),
        (
            ["train", "--optimizer", "kfac", "--model", "cnn"],
            "argument --optimizer: kfac does not fit the model cnn (LeNet with batch norm): its "
            "batch normalization couples the examples",
        ),
        (
            ["train", "--optimizer", "diag-ggn", "--dropout", "0.2"],
            "diag-ggn does not fit the model mlp: the curvature is measured without dropout",
        ),
        (["train", "--optimizer", "kfac", "--damping", "0"], "argument --damping"),
        ([], "required: COMMAND"),
    ],
)
def test_cli_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--hidden",
        "--activation",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--seed",
        "--grad",
        "--dropout",
        "--batch-norm",
        "--feedback",
    ):
        assert option in out


@pytest.mark.parametrize("feedback", ["fa", "dfa"])
def test_cli_feedback_alignment_records_angles_and_taps(feedback, capsys):
    """Training with a swapped backward: the gradient check still compares the backprop rules
    (and passes), metrics.jsonl gets per-layer angles and norms, alignment.png is drawn."""
    import json
    from pathlib import Path

    argv = ["train", "--epochs", "2", "--hidden", "16,16", "--feedback", feedback, "--out", "fb"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"gradient check.*: ok$", out, re.MULTILINE)
    records = [json.loads(line) for line in Path("fb/metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        angles = r["alignment"]["grads"]
        assert set(angles) == {"dense_0", "dense_2", "dense_4"}
        assert angles["dense_4"] < 0.5 and 1 < angles["dense_0"] < 180  # float32 arccos near 0°
        assert set(r["norms"]) == {"delta", "activation", "grad"}
    assert Path("fb/alignment.png").stat().st_size > 0


@pytest.mark.parametrize("grad", ["forward", "forward-activity"])
def test_cli_trains_on_forward_gradients_and_records_their_angles(grad, capsys):
    """--grad forward: the steps take no backward pass; the gradient check still compares the
    handwritten backward (and passes); metrics.jsonl gets each layer's angle between one
    estimate and the true gradient, near 90° for a random direction in thousands of weights and
    never 0° (the estimate is not the gradient)."""
    import json
    from pathlib import Path

    argv = ["train", "--epochs", "2", "--hidden", "16", "--grad", grad, "--out", "fg"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"gradients: {grad}" in out
    assert re.search(r"gradient check.*: ok$", out, re.MULTILINE)
    records = [json.loads(line) for line in Path("fg/metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        angles = r["alignment"]["grads"]
        assert set(angles) == {"dense_0", "dense_2"}
        assert all(5 < a < 175 for a in angles.values()), angles
    assert Path("fg/alignment.png").stat().st_size > 0


def test_cli_short_run_with_reference_gradients(capsys):
    argv = [
        "train",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--grad",
        "reference",
        "--optimizer",
        "momentum",
        "--lr",
        "0.05",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"gradient check.*: ok$", out, re.MULTILINE)
    assert "gradients: reference" in out
    assert re.search(r"^epoch 2/2 ", out, re.MULTILINE)
    assert "final test accuracy" in out


@pytest.mark.slow
def test_cli_defaults_reach_97_percent(capsys):
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^epoch +\d+/30 ", out, re.MULTILINE)) == 30
    accuracy = float(re.search(r"final test accuracy ([\d.]+)%", out).group(1))
    assert accuracy >= 97.0


def test_cli_exits_1_when_the_gradient_check_fails(capsys, monkeypatch):
    import manual_bp.train.run

    failed = {
        "loss": 2.3,
        "max_abs_error": 0.5,
        "max_rel_error": 0.1,
        "worst": "grads/dense_0/w",
        "num_compared": 8,
        "dtype": "float32",
        "tolerance": 1e-4,
        "ok": False,
    }
    monkeypatch.setattr(manual_bp.train.run, "verify_gradients", lambda *args, **kwargs: failed)
    assert main(["train", "--hidden", "8"]) == 1
    captured = capsys.readouterr()
    assert "FAILED (worst: grads/dense_0/w)" in captured.out
    assert "train loss" not in captured.out
    assert "disagree with jax.grad" in captured.err


def test_cli_adamw_with_clipping_runs_and_resume_checks_those_settings(tmp_path, capsys):
    out = str(tmp_path / "w")
    base = ["train", "--hidden", "8", "--epochs", "1", "--out", out, "--batch-size", "128"]
    assert main([*base, "--optimizer", "adamw", "--clip-norm", "1.0"]) == 0
    with pytest.raises(SystemExit) as info:
        main([*base, "--optimizer", "adamw", "--clip-norm", "2.0", "--resume", "--epochs", "2"])
    assert info.value.code == 2
    assert "clip_norm=1.0 (now 2.0)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("optimizer", "model"), [("kfac", "mlp"), ("kfac", "lstm"), ("diag-ggn", "cnn")]
)
def test_cli_trains_with_a_curvature_optimizer(optimizer, model, tmp_path, capsys):
    """--optimizer kfac / diag-ggn: the gradient preconditioned by the batch's curvature (the
    LSTM's w_x and w_h get Kronecker factors, LeNet's batch norm the diagonal GGN) trains,
    the settings are printed and recorded, and --resume requires the same damping."""
    out = str(tmp_path / "c")
    base = ["train", "--optimizer", optimizer, "--model", model, "--hidden", "16"]
    base += ["--out", out, "--batch-size", "64"]
    assert main([*base, "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"{optimizer} lr={0.02 if optimizer == 'kfac' else 0.01:g} damping=0.1 " in printed
    assert re.search(r"gradient check.*: ok$", printed, re.MULTILINE)
    accuracy = float(re.search(r"final test accuracy ([\d.]+)%", printed)[1])
    # chance is 10%; the LSTM learns slowest (55% here after 2 epochs, 94% after 3 of width 64)
    assert accuracy >= (40.0 if model == "lstm" else 85.0), printed
    losses = [float(v) for v in re.findall(r"train loss ([\d.]+)", printed)]
    assert losses[1] < losses[0], printed
    with pytest.raises(SystemExit) as info:
        main([*base, "--epochs", "3", "--resume", "--damping", "0.5"])
    assert info.value.code == 2
    assert "damping=0.1 (now 0.5)" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_cnn_gradient_checks_of_a_converged_run_and_its_resume_pass(tmp_path, capsys):
    """A converged run's loss is small; its gradient checks judge it on the scale of its
    per-example terms and logits, so none of them cries wolf, and the finished run resumes."""
    argv = ["train", "--model", "cnn", "--epochs", "60", "--seed", "3", "--verify-every", "10"]
    argv += ["--out", str(tmp_path / "cnn")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    checks = re.findall(r"^gradient check, (.*?), manual vs jax.grad .*: (\w+)$", out, re.M)
    assert [w for w, _ in checks] == ["first batch"] + [f"epoch {e}" for e in range(10, 61, 10)]
    assert all(status == "ok" for _, status in checks), checks
    assert float(re.search(r"final test accuracy ([\d.]+)%", out)[1]) >= 98.0
    assert main([*argv, "--resume"]) == 0
    assert "FAILED" not in capsys.readouterr().out


@pytest.mark.slow
def test_cli_cnn_reaches_98_percent_on_digits(capsys):
    assert main(["train", "--model", "cnn", "--lr", "0.002", "--epochs", "40"]) == 0
    accuracy = float(re.search(r"final test accuracy ([\d.]+)%", capsys.readouterr().out)[1])
    assert accuracy >= 98.0
