"""The backpropagation lecture, executable: its classic 2-2-2-2 sigmoid network, worked by hand.

The lecture in five lines:

1. Training is gradient descent on C(θ) = Σₙ Cⁿ(θ); backprop is an efficient way to get ∇C.
2. For a weight w feeding the pre-activation z: ∂C/∂w = ∂z/∂w · ∂C/∂z.
3. Forward pass: ∂z/∂w is the activation a on that weight's input. Run the input forward and
   keep every a.
4. Backward pass: ∂C/∂z = σ'(z) · Σₖ wₖ ∂C/∂z'ₖ, summed over every neuron k that a feeds, from
   the output layer backwards: a "reversed network" whose amplifiers are σ'(z).
5. At the output layer ∂C/∂z = σ'(z) · ∂C/∂a, with ∂C/∂a straight from the loss.

The network (2 inputs, two hidden layers of 2 sigmoid neurons, 2 sigmoid outputs) and its
numbers are the lecture's, so the forward pass reproduces its activations 0.98/0.12, 0.86/0.11
and 0.62/0.83. The target is y = (1, 0) and the loss is ``manual_bp.rules.mse``: the mean of
(a − y)² over the 2 outputs, which is the lecture's quadratic cost C = ½‖a − y‖².

The script prints the forward pass, runs the backward pass as the lecture's recurrence (one
neuron at a time, plain numpy), turns it into gradients, and then checks every number against
``manual_bp.value_grad_and_deltas`` and against ``jax.grad`` of the independent reference.
It exits with status 1 if any check fails.

Run it with ``python examples/lecture.py``.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import manual_bp
import reference
from manual_bp.nn import Dense, Layer, Sigmoid, check_params, serial

jax.config.update("jax_enable_x64", True)

Params = dict[str, dict[str, jax.Array]]

X = (1.0, -1.0)  # the input
Y = (1.0, 0.0)  # the target

# For each layer, for each neuron: (its weights from each input, its bias).
NEURONS = (
    (((1.0, -2.0), 1.0), ((-1.0, 1.0), 0.0)),  # layer 1
    (((2.0, -1.0), 0.0), ((-2.0, -1.0), 0.0)),  # layer 2
    (((3.0, -1.0), -2.0), ((-1.0, 4.0), 2.0)),  # layer 3: the outputs
)

RTOL = 1e-12  # float64: the three computations agree to rounding
ATOL = 1e-15


class LayerForward(NamedTuple):
    """One layer of the forward pass, for one example: z = Σᵢ w[i, j]·a_in[i] + b[j], a = σ(z)."""

    dense: str  # the names of the layer's Dense and Sigmoid in the network
    sigmoid: str
    a_in: np.ndarray  # (inputs,): the activations coming in; a_in[i] is ∂z/∂w[i, j]
    w: np.ndarray  # (inputs, neurons): w[i, j] is the weight from input i to neuron j
    b: np.ndarray  # (neurons,)
    z: np.ndarray  # (neurons,)
    a: np.ndarray  # (neurons,)


class NeuronBackward(NamedTuple):
    """One neuron of the backward pass."""

    layer: int  # counted from 1, as in the lecture
    neuron: int
    a: float
    target: float | None  # y at the output layer, None in a hidden layer
    sigma_prime: float  # σ'(z) = a(1 − a)
    terms: tuple[tuple[float, float], ...]  # (wₖ, ∂C/∂z'ₖ) per neuron k above; () at the output
    dc_da: float  # ∂C/∂a
    dc_dz: float  # ∂C/∂z = σ'(z)·∂C/∂a


class Backward(NamedTuple):
    """The backward pass: per neuron, and per layer in manual_bp's naming."""

    neurons: list[NeuronBackward]  # output layer first
    deltas: dict[str, np.ndarray]  # Dense name → ∂C/∂z, Sigmoid name → ∂C/∂a
    grads: dict[str, dict[str, np.ndarray]]  # Dense name → {"w": ∂C/∂w, "b": ∂C/∂b}


def build_network() -> tuple[Layer, Params]:
    """The lecture's network as a manual_bp network, with the lecture's weights and biases."""
    net = serial(Dense(2), Sigmoid(), Dense(2), Sigmoid(), Dense(2), Sigmoid())
    params: Params = {layer.name: {} for layer in net.children}
    for dense, neurons in zip(net.children[0::2], NEURONS, strict=True):
        w = np.array([weights for weights, _ in neurons]).T  # w[i, j]: input i → neuron j
        b = np.array([bias for _, bias in neurons])
        params[dense.name] = {"w": jnp.asarray(w, jnp.float64), "b": jnp.asarray(b, jnp.float64)}
    check_params(net, params, (1, len(X)))
    return net, params


def example_data() -> tuple[np.ndarray, np.ndarray]:
    """The input x and target y, one example each."""
    return np.array(X), np.array(Y)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) = 1 / (1 + e^{−z})."""
    return 1 / (1 + np.exp(-z))


def forward_table(net: Layer, params: Params, x: np.ndarray) -> list[LayerForward]:
    """The forward pass by hand, one neuron at a time, keeping every layer's a_in, z and a."""
    layers = []
    a_in = x
    for dense, act in zip(net.children[0::2], net.children[1::2], strict=True):
        w = np.asarray(params[dense.name]["w"])
        b = np.asarray(params[dense.name]["b"])
        z = np.array(
            [sum(w[i, j] * a_in[i] for i in range(w.shape[0])) + b[j] for j in range(b.size)]
        )
        a = sigmoid(z)
        layers.append(LayerForward(dense.name, act.name, a_in, w, b, z, a))
        a_in = a  # this layer's a is the next layer's input
    return layers


def backward_by_recurrence(layers: list[LayerForward], y: np.ndarray) -> Backward:
    """The backward pass as the lecture writes it, from the output layer back.

    Output layer: ∂C/∂z = σ'(z)·∂C/∂a, with ∂C/∂a = 2(a − y)/M from C = mean over the M outputs
    of (a − y)² (for M = 2 that is a − y). Hidden layers: ∂C/∂z = σ'(z)·Σₖ wₖ·∂C/∂z'ₖ, where
    wₖ is the weight from this neuron to neuron k of the layer above. Then ∂C/∂w = a·∂C/∂z.
    """
    neurons: list[NeuronBackward] = []
    deltas: dict[str, np.ndarray] = {}
    grads: dict[str, dict[str, np.ndarray]] = {}
    above: LayerForward | None = None  # the layer above, already done
    above_dc_dz = np.zeros(0)
    for number in reversed(range(len(layers))):
        layer = layers[number]
        sigma_prime = layer.a * (1 - layer.a)  # σ'(z) = σ(z)(1 − σ(z)) = a(1 − a)
        dc_da = np.zeros_like(layer.a)
        dc_dz = np.zeros_like(layer.z)
        for j in range(layer.a.size):
            target = None
            if above is None:  # output layer: ∂C/∂a from the loss
                target = float(y[j])
                terms: tuple[tuple[float, float], ...] = ()
                dc_da[j] = 2 * (layer.a[j] - y[j]) / y.size
            else:  # hidden layer: a feeds neuron k above through the weight w[j, k]
                terms = tuple(
                    (float(above.w[j, k]), float(above_dc_dz[k])) for k in range(above_dc_dz.size)
                )
                dc_da[j] = sum(w_k * delta_k for w_k, delta_k in terms)
            dc_dz[j] = sigma_prime[j] * dc_da[j]
            neurons.append(
                NeuronBackward(
                    layer=number + 1,
                    neuron=j + 1,
                    a=float(layer.a[j]),
                    target=target,
                    sigma_prime=float(sigma_prime[j]),
                    terms=terms,
                    dc_da=float(dc_da[j]),
                    dc_dz=float(dc_dz[j]),
                )
            )
        deltas[layer.sigmoid] = dc_da
        deltas[layer.dense] = dc_dz
        # ∂C/∂w[i, j] = a_in[i]·∂C/∂z[j] (the forward pass's a times the backward pass's δ)
        grads[layer.dense] = {"w": np.outer(layer.a_in, dc_dz), "b": dc_dz.copy()}
        above, above_dc_dz = layer, dc_dz
    return Backward(neurons, deltas, grads)


def loss_by_hand(layers: list[LayerForward], y: np.ndarray) -> float:
    """C = mean over the outputs of (a − y)², = ½‖a − y‖² for 2 outputs."""
    diff = layers[-1].a - y
    return float(np.mean(diff * diff))


# ---- printing ---------------------------------------------------------------------------------


def _num(v: float, digits: int = 4) -> str:
    """A number inside an expression: negatives in parentheses."""
    text = f"{v:.{digits}f}" if v != int(v) else f"{v:g}"
    return f"({text})" if v < 0 else text


def _table(header: list[str], rows: list[list[str]], align: str) -> str:
    """Columns padded to a common width; ``align`` has one 'l' or 'r' per column."""
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.ljust(width) if how == "l" else cell.rjust(width)
            for cell, width, how in zip(row, widths, align, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def print_forward(layers: list[LayerForward], x: np.ndarray, y: np.ndarray) -> None:
    print("The lecture's network: 2 inputs → 2 sigmoid → 2 sigmoid → 2 sigmoid outputs")
    print(f"input x = ({x[0]:g}, {x[1]:g}),  target y = ({y[0]:g}, {y[1]:g})")
    print("loss C = mse = mean over the 2 outputs of (a − y)² = ½‖a − y‖², the quadratic cost")
    print()
    print("1. Forward pass: z = Σᵢ wᵢ·aᵢ + b, a = σ(z)")
    print("   a is ∂z/∂w for every weight leaving that neuron (the lecture's 2.1)")
    print()
    rows = []
    for number, layer in enumerate(layers, start=1):
        for j in range(layer.z.size):
            terms = [f"{_num(layer.w[i, j])}·{_num(a)}" for i, a in enumerate(layer.a_in)]
            expr = " + ".join([*terms, _num(layer.b[j])])
            a = layer.a[j]
            rows.append(
                [str(number), str(j + 1), expr, f"{layer.z[j]:.6f}", f"{a:.6f}", f"{a:.2f}"]
            )
    print(_table(["layer", "neuron", "z = Σᵢ wᵢ·aᵢ + b", "z", "a = σ(z)", "a ≈"], rows, "rrlrrr"))
    print()


def print_backward(backward: Backward, loss: float) -> None:
    print("2. Backward pass: ∂C/∂z from the output layer back (the lecture's 2.2)")
    print("   output layer:  ∂C/∂z = σ'(z)·∂C/∂a, with ∂C/∂a = a − y from the loss")
    print("   hidden layers: ∂C/∂z = σ'(z)·Σₖ wₖ·∂C/∂z'ₖ over the neurons k this one feeds")
    print("   σ'(z) = a(1 − a)")
    print(f"   C = {loss:.6f}")
    print()
    rows = []
    for n in backward.neurons:
        if n.target is None:  # hidden: Σₖ wₖ·∂C/∂z'ₖ
            inner = " + ".join(f"{_num(w)}·{_num(d)}" for w, d in n.terms)
        else:  # output: a − y
            inner = f"{_num(n.a)} − {_num(n.target)}"
        expr = f"{_num(n.sigma_prime)}·({inner})"
        rows.append(
            [
                str(n.layer),
                str(n.neuron),
                f"{n.sigma_prime:.6f}",
                f"{n.dc_da:.6f}",
                f"{n.dc_dz:.6f}",
                expr,
            ]
        )
    header = ["layer", "neuron", "σ'(z)", "∂C/∂a", "∂C/∂z", "∂C/∂z = σ'(z)·(∂C/∂a)"]
    print(_table(header, rows, "rrrrrl"))
    print()


def print_gradients(layers: list[LayerForward], backward: Backward) -> None:
    print("3. Gradients: ∂C/∂w = a·∂C/∂z (a from the forward pass), ∂C/∂b = ∂C/∂z")
    print("   w(i→j) is the weight from input i of the layer (x, or the layer below's a)")
    print("   to neuron j")
    print()
    rows = []
    for number, layer in enumerate(layers, start=1):
        grads = backward.grads[layer.dense]
        dc_dz = backward.deltas[layer.dense]
        for j in range(layer.z.size):
            for i, a in enumerate(layer.a_in):
                rows.append(
                    [
                        str(number),
                        f"w({i + 1}→{j + 1})",
                        f"{a:.6f}",
                        f"{dc_dz[j]:.6f}",
                        f"{grads['w'][i, j]:.6f}",
                    ]
                )
            rows.append([str(number), f"b({j + 1})", "", f"{dc_dz[j]:.6f}", f"{grads['b'][j]:.6f}"])
    print(_table(["layer", "parameter", "a", "∂C/∂z", "∂C/∂param"], rows, "rlrrr"))
    print()


# ---- checks -----------------------------------------------------------------------------------


def _flat(tree: Any) -> dict[str, np.ndarray]:
    """A nested dict of arrays as {"dense_0/w": array, ...}."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(key, "key", key)) for key in path): np.asarray(leaf)
        for path, leaf in leaves
    }


def _first_example(deltas: dict[str, Any]) -> dict[str, np.ndarray]:
    """Deltas of a batch of one, as the deltas of that one example."""
    return {name: np.asarray(delta)[0] for name, delta in deltas.items()}


def check(label: str, actual: Any, expected: Any) -> None:
    """Print ``check: label ... ok``, or raise AssertionError saying what differs."""
    print(f"check: {label} ...", end=" ", flush=True)
    try:
        actual, expected = _flat(actual), _flat(expected)
        if sorted(actual) != sorted(expected):
            raise AssertionError(f"different entries: {sorted(actual)} vs {sorted(expected)}")
        for key in actual:
            np.testing.assert_allclose(
                actual[key], expected[key], rtol=RTOL, atol=ATOL, strict=True, err_msg=key
            )
    except AssertionError:
        print("FAILED")
        raise
    print("ok")


def _forward_by_hand(layers: list[LayerForward]) -> dict[str, np.ndarray]:
    """Every layer's output from the forward table, under the layer's name in the network."""
    return {
        name: v
        for layer in layers
        for name, v in ((layer.dense, layer.z), (layer.sigmoid, layer.a))
    }


def _forward_manual(net: Layer, params: Params, xb: jax.Array) -> dict[str, np.ndarray]:
    """Every layer's output from manual_bp's own layer forwards (example 0 of the batch)."""
    outputs = {}
    h = xb
    for layer in net.children:
        h, _ = layer.forward(params[layer.name], h)
        outputs[layer.name] = np.asarray(h)[0]
    return outputs


def run_checks(
    net: Layer, params: Params, layers: list[LayerForward], backward: Backward, y: np.ndarray
) -> None:
    """Compare the recurrence with manual_bp's backward pass and with jax.grad of the reference.

    Raises AssertionError at the first disagreement.
    """
    xb = jnp.asarray(layers[0].a_in, jnp.float64).reshape(1, -1)  # a batch of one
    yb = jnp.asarray(y, jnp.float64).reshape(1, -1)
    c_manual, grads_manual, deltas_manual = manual_bp.value_grad_and_deltas(net, "mse")(
        params, xb, yb
    )
    c_ref, grads_ref, deltas_ref = reference.value_grad_and_deltas(net, "mse")(params, xb, yb)
    deltas_manual, deltas_ref = _first_example(deltas_manual), _first_example(deltas_ref)
    grads_manual = {name: g for name, g in grads_manual.items() if g}  # Sigmoid has no params
    grads_ref = {name: g for name, g in grads_ref.items() if g}

    check(
        "forward by hand == manual_bp forward",
        _forward_by_hand(layers),
        _forward_manual(net, params, xb),
    )
    by_hand = loss_by_hand(layers, y)
    check(
        "loss by hand == manual_bp loss == reference loss",
        {"manual_bp": by_hand, "reference": by_hand},
        {"manual_bp": c_manual, "reference": c_ref},
    )
    check("recurrence deltas == manual_bp deltas", backward.deltas, deltas_manual)
    check("recurrence grads == manual_bp grads", backward.grads, grads_manual)
    check("recurrence deltas == reference deltas (jax.grad)", backward.deltas, deltas_ref)
    check("recurrence grads == reference grads (jax.grad)", backward.grads, grads_ref)
    check("manual_bp deltas == reference deltas (jax.grad)", deltas_manual, deltas_ref)
    check("manual_bp grads == reference grads (jax.grad)", grads_manual, grads_ref)


def main() -> int:
    net, params = build_network()
    x, y = example_data()
    layers = forward_table(net, params, x)
    backward = backward_by_recurrence(layers, y)
    print_forward(layers, x, y)
    print_backward(backward, loss_by_hand(layers, y))
    print_gradients(layers, backward)
    print("4. Checks: the recurrence, manual_bp and jax.grad of the reference agree")
    print()
    try:
        run_checks(net, params, layers, backward, y)
    except AssertionError as err:
        print(err, file=sys.stderr)
        return 1
    print()
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
