"""Kronecker factors of the GGN for Dense and Conv2D layers: KFAC and KFLR.

For a layer z = ã W̃ with W̃ = [W; b] (the bias as the last row, ã = [a, 1]) applied at P
positions of each example (P = 1 for a Dense layer on vectors; the T positions of a Dense
layer on (N, T, I) sequences; the output pixels of a Conv2D layer, whose a are the input
patches, Grosse & Martens 2016), example n's gradient for column c of the loss's Hessian
factor is Σ_p ã_np δ_npcᵀ. The GGN block of vec(W̃) (row-major: index (i, o)) is approximated
by A ⊗ G (``jnp.kron(A, G)``); two ways to treat the positions (Eschenhagen et al. 2023):

* **expand** — positions are examples of their own:
  A = (1/(N P)) Σ_{n,p} ã_np ã_npᵀ,  G = Σ_{n,p,c} δ_npc δ_npcᵀ.
  Exact when N = P = 1, and for a linear output layer with the mean squared error (whose
  Hessian is the same at every position) for every N and P.
* **reduce** — positions are summed first:
  A = (1/N) Σ_n ā_n ā_nᵀ with ā_n = (1/P) Σ_p ã_np,  G = Σ_{n,c} δ̄_nc δ̄_ncᵀ with δ̄ = Σ_p δ_np.
  Exact when N = 1 and ã_np does not depend on p, and for a layer followed by a mean over
  its positions and the mean squared error.

With P = 1 the two agree. **KFLR** uses the exact factor S (C = K columns per output
position); **KFAC** a Monte-Carlo one (``mc_samples`` sampled labels per position). The
deltas δ come from the handwritten backward pass on the columns of S, pushed through the
whole batch at once (:func:`~manual_bp.curvature.columns.position_columns`): L·C backward
passes for L output positions per example. Cost per layer beyond them: O(N P I²) for A and
O(L C N P O²) for G. Networks with batch statistics are refused (their examples are coupled).
Factors are computed for the Dense and Conv2D layers inside ``serial`` and ``residual``
combinators; other layers (the recurrent and attention rules keep their weight-shared
projections inside one rule) have none here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._checks import require_positive_int
from ..nn import Layer, has_state
from ..rules import Rule, get_rule
from .columns import delta_of, leaves, position_columns, run_forward

__all__ = ["KFAC_KINDS", "SETTINGS", "Kronecker", "conv_patches", "kfac_factors"]

KFAC_KINDS = ("kfac", "kflr")
"""Monte-Carlo (``kfac``) or exact (``kflr``) loss factor."""

SETTINGS = ("expand", "reduce")
"""How positions of a weight-shared layer enter the factors (module docstring)."""


class Kronecker(NamedTuple):
    """A layer's factors: ``a`` (I', I') over the augmented inputs [a, 1] (I' = I, or I + 1
    with a bias), ``g`` (O, O) over the outputs; the GGN block of vec([W; b]) ≈ kron(a, g)."""

    a: Any
    g: Any


def conv_patches(layer: Layer, x: Any) -> Any:
    """The input patches of a Conv2D ``layer`` on x (N, H, W, C): (N, H', W', kh·kw·C), in
    the order of ``w.reshape(-1, features)`` (kernel row, column, channel), so that the layer's
    output is patches @ w.reshape(-1, features) + b."""
    config = dict(layer.config)
    if config["groups"] != 1:
        raise ValueError(
            f"conv_patches: layer {layer.name!r} has groups={config['groups']}; Kronecker "
            "factors are computed for groups=1 only"
        )
    kh, kw = config["kernel_size"]
    padding = config["padding"]
    patches = lax.conv_general_dilated_patches(
        x,
        (kh, kw),
        config["strides"],
        padding if isinstance(padding, str) else tuple(padding),
        rhs_dilation=config["dilation"],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    n, h, w, _ = patches.shape
    c = x.shape[-1]
    # lax orders the patch features (channel, row, column); the kernel is (row, column, channel).
    patches = jnp.reshape(patches, (n, h, w, c, kh, kw))
    return jnp.reshape(jnp.transpose(patches, (0, 1, 2, 4, 5, 3)), (n, h, w, kh * kw * c))


def _inputs(layer: Layer, a: Any, params: Any) -> Any:
    """ã (N, P, I'): the layer's inputs by position, with a 1 appended for the bias."""
    if layer.kind == "conv2d":
        a = conv_patches(layer, a)
    a = jnp.reshape(a, (a.shape[0], -1, a.shape[-1]))
    if "b" in params:
        a = jnp.concatenate([a, jnp.ones((*a.shape[:-1], 1), a.dtype)], axis=-1)
    return a


def kfac_factors(
    net: Layer,
    loss: Rule | str,
    *,
    kind: str = "kfac",
    setting: str = "expand",
    mc_samples: int = 1,
    train: bool = True,
) -> Callable[..., dict[str, Kronecker]]:
    """``f(params, x, y, key=None) -> {path: Kronecker(A, G)}`` for every Dense and Conv2D
    layer of ``net``, by the path its delta is named by. ``kind`` ``"kfac"`` (Monte-Carlo,
    ``mc_samples`` labels per output position drawn with ``key``) or ``"kflr"`` (exact);
    ``setting`` ``"expand"`` or ``"reduce"``. Definitions, exactness and cost: module
    docstring. Works under ``jax.jit``."""
    op = "kfac_factors"
    if not isinstance(net, Layer):
        raise TypeError(f"{op}: expected a manual_bp.nn.Layer as the network, got {net!r}")
    if kind not in KFAC_KINDS:
        raise ValueError(f"{op}: kind must be one of {KFAC_KINDS}, got {kind!r}")
    if setting not in SETTINGS:
        raise ValueError(f"{op}: setting must be one of {SETTINGS}, got {setting!r}")
    mc_samples = require_positive_int(op, "mc_samples", mc_samples)
    loss = get_rule(loss)
    if has_state(net):
        raise ValueError(
            f"{op}: the network {net.name or net.kind!r} keeps batch statistics, which couple "
            "the examples; Kronecker factors need independent examples"
        )
    samples = mc_samples if kind == "kfac" else None

    def f(params, x, y, key=None):
        run = run_forward(op, net, loss, params, x, y, key=key, mc_samples=samples, train=train)
        cols = position_columns(run.factor)
        deltas = jax.vmap(lambda dy: net.backward(params, run.tape, dy)[1])(cols)
        factors = {}
        for path, layer, tape, p in leaves(net, run.tape, params):
            if layer.kind not in ("dense", "conv2d"):
                continue
            a = _inputs(layer, tape, p)  # (N, P, I')
            d = delta_of(deltas, path, cols)
            d = jnp.reshape(d, (d.shape[0], a.shape[0], a.shape[1], d.shape[-1]))
            if setting == "expand":
                big_a = jnp.einsum("npi,npj->ij", a, a) / (a.shape[0] * a.shape[1])
                big_g = jnp.einsum("cnpo,cnpq->oq", d, d)
            else:
                mean_a, sum_d = jnp.mean(a, axis=1), jnp.sum(d, axis=2)
                big_a = jnp.einsum("ni,nj->ij", mean_a, mean_a) / a.shape[0]
                big_g = jnp.einsum("cno,cnq->oq", sum_d, sum_d)
            factors[path] = Kronecker(big_a, big_g)
        if not factors:
            raise ValueError(f"{op}: the network {net.name or net.kind!r} has no Dense or Conv2D")
        return factors

    return f
