"""Credit assignment: swap how a layer sends the error backward, and measure what that costs.

Backprop sends the error to a layer's input through the transpose of its weights,
δ_in = δ_out Wᵀ (the lecture's "reversed network"). Because every backward rule here is
written by hand, the matrix used there can be swapped without touching the layer's code:

* :func:`feedback` wraps a weighted layer (dense, conv, recurrent, attention) so that its
  backward uses B in place of W wherever W carries error backward; ∂C/∂W = aᵀδ is unchanged:

  - ``"backprop"``: B = W (exactly the unwrapped layer);
  - ``"fa"``: feedback alignment (Lillicrap et al. 2016), a fixed random B kept in the
    network's *state* under ``"feedback"`` (seeded by ``init_state``'s key, checkpointed and
    sharded with the rest of the state);
  - ``"sign"``: sign symmetry (Liao et al. 2016), B = sign(W);
  - ``"kp"``: Kolen–Pollack, B is a *parameter* (``params[...]["feedback"]``) whose gradient
    is W's, so the optimizer gives B W's update and weight decay and B − W decays to 0.

* :func:`direct_feedback` is :func:`~manual_bp.nn.serial` with direct feedback alignment
  (Nøkland 2016): the output error e = ∂C/∂(network output) is projected straight to the input
  of every weighted layer but the first, by its own fixed random matrix: δ = e B.

* :func:`as_backprop` gives the same network with true backprop everywhere (same params,
  state and tapes) and :func:`alignment` the angle between each variant's deltas and weight
  gradients and backprop's, from one forward pass.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .grad import angle, weight_angles
from .nn import Context, Layer, check_params, check_state, residual, serial
from .nn.core import Shape, check_context, check_input, serial_backward
from .nn.tangents import serial_jvp
from .rules import Rule, get_rule
from .rules.attention import AttentionResiduals
from .rules.recurrent import GRUResiduals, LSTMResiduals, RNNResiduals

__all__ = [
    "TRANSPORT",
    "VARIANTS",
    "alignment",
    "as_backprop",
    "direct_feedback",
    "feedback",
]

VARIANTS = ("backprop", "fa", "sign", "kp")
"""The backward variants :func:`feedback` accepts."""

_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)
_HOW = (
    "they are kept in the network's state; run the forward with Context(state=...), "
    "e.g. through value_and_grad(net, loss, has_state=True)"
)


class _Transport(NamedTuple):
    """Where a layer kind's backward reads the weights that carry error backward.

    ``weights``: their names; ``substitute(params, tape, bs) -> (params, tape)`` puts the
    matrices ``bs`` (by name) in their place; ``residuals``: the rule's residual NamedTuple
    that is the layer's tape and holds them as fields, or ``None`` when they are read from
    ``params``.
    """

    weights: tuple[str, ...]
    substitute: Callable[..., tuple[Any, Any]]
    residuals: type | None


def _in_params(*names: str) -> _Transport:
    """Layers whose backward reads W from ``params``: substitute B there."""

    def substitute(params, tape, bs):
        unknown = sorted(set(bs) - set(params))
        if unknown:
            raise ValueError(
                f"feedback: the layer has no parameters {unknown} to substitute; "
                f"its parameters are {sorted(params)}"
            )
        return {**params, **bs}, tape

    return _Transport(names, substitute, None)


def _in_tape(residuals: type, *names: str) -> _Transport:
    """Layers whose backward reads W from the rule's residuals (the tape, a ``residuals``
    NamedTuple): substitute B for those fields, in the residual's dtype (attention keeps
    widened copies)."""
    fields = getattr(residuals, "_fields", ())
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise TypeError(
            f"credit: {residuals.__name__} has no fields {unknown} (its fields are {fields}); "
            "TRANSPORT must name the rule's residuals as they are defined"
        )

    def substitute(params, tape, bs):
        if not isinstance(tape, residuals):
            raise TypeError(
                f"feedback: the layer's tape must be the rule's {residuals.__name__}, "
                f"got {type(tape).__name__}"
            )
        swapped = {n: b.astype(getattr(tape, n).dtype) for n, b in bs.items()}
        return params, tape._replace(**swapped)

    return _Transport(names, substitute, residuals)


TRANSPORT: dict[str, _Transport] = {
    "dense": _in_params("w"),
    "conv2d": _in_params("w"),
    "rnn": _in_tape(RNNResiduals, "w_x", "w_h"),
    "lstm": _in_tape(LSTMResiduals, "w_x", "w_h"),
    "gru": _in_tape(GRUResiduals, "w_x", "w_h"),
    "multi_head_attention": _in_tape(AttentionResiduals, "wq", "wk", "wv", "wo"),
}
"""For each weighted layer kind: the weights that carry error backward (``weights``), how to
put B in their place for the layer's backward (``substitute``) and, for layers that read them
from their tape, the rule's residuals that hold them (``residuals``). In every one of these
backward rules W is used only to send error backward (δ Wᵀ); the weight gradients come from
the tape, so they stay aᵀδ. Recurrent layers carry error through W_x (to the layer below) and
W_h (back in time); attention through W_q, W_k, W_v (to its input) and W_o (into the
attention itself)."""

_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""backward function of a wrapped layer -> the same layer's plain backprop backward."""


def _weight_shapes(layer: Layer, weights: Sequence[str], input_shape: Shape, dtype: Any):
    p = jax.eval_shape(lambda k: layer.init(k, tuple(input_shape), dtype), _KEY)
    return {n: p[n].shape for n in weights}


def _draw(init, key, shapes, dtype):
    keys = jax.random.split(key, len(shapes))
    return {n: init(k, s, dtype) for k, (n, s) in zip(keys, shapes.items(), strict=True)}


def feedback(
    layer: Layer,
    variant: str = "fa",
    *,
    weights: Sequence[str] | None = None,
    init: Callable[..., Any] | None = None,
) -> Layer:
    """``layer`` with its error sent backward by ``variant`` (see the module docstring).

    ``weights`` picks which of the layer's transport weights (:data:`TRANSPORT`) are swapped
    (default all; e.g. ``("w_h",)`` for feedback alignment through time only). ``init`` draws
    B (default LeCun normal, W's own default scale). The wrapped layer keeps its name, kind
    and params (plus ``"feedback"`` for ``kp``), so the reference, checkpoints and
    :func:`~manual_bp.value_and_grad` see the same network.

    The forward pass is the layer's own. For ``fa`` it needs the state, so the network is run
    with ``value_and_grad(..., has_state=True)``.
    """
    return _feedback(layer, variant, weights, init, twin=False)


def _feedback(layer, variant, weights, init, *, twin):
    if not isinstance(layer, Layer):
        raise TypeError(f"feedback: layer must be a manual_bp.nn.Layer, got {layer!r}")
    if variant not in VARIANTS:
        raise ValueError(f"feedback: variant must be one of {VARIANTS}, got {variant!r}")
    if layer.kind not in TRANSPORT:
        raise ValueError(
            f"feedback: layer kind {layer.kind!r} has no weights that carry error backward; "
            f"choose one of {sorted(TRANSPORT)}"
        )
    if "feedback" in layer.config:
        raise ValueError(f"feedback: layer {layer.name or layer.kind!r} is already wrapped")
    transport = TRANSPORT[layer.kind]
    names = transport.weights
    weights = names if weights is None else tuple(weights)
    unknown = sorted(set(weights) - set(names))
    if unknown or not weights:
        raise ValueError(
            f"feedback: weights must be a non-empty subset of {names} for a {layer.kind} "
            f"layer, got {weights!r}"
        )
    draw = init or jax.nn.initializers.lecun_normal()
    op = f"feedback {variant!r} on a {layer.kind} layer"

    def _inner(params):
        return {k: v for k, v in params.items() if k != "feedback"}

    def init_params(key, input_shape, dtype=jnp.float32):
        params = layer.init(key, input_shape, dtype)
        if variant == "kp":
            shapes = _weight_shapes(layer, weights, input_shape, dtype)
            params["feedback"] = _draw(draw, jax.random.fold_in(key, 1), shapes, dtype)
        return params

    def init_state(key, input_shape, dtype=jnp.float32):
        state = dict(layer.init_state(key, input_shape, dtype))
        if variant == "fa":
            shapes = _weight_shapes(layer, weights, input_shape, dtype)
            state["feedback"] = _draw(draw, jax.random.fold_in(key, 2), shapes, dtype)
        return state

    def forward(params, x, ctx=None):
        check_context(layer.name or op, ctx)
        state = None if ctx is None else ctx.state
        inner_ctx = None
        if ctx is not None:
            inner_state = None if state is None else _inner(state)
            inner_ctx = ctx._replace(state=inner_state)
        y, t = layer.forward(_inner(params), x, inner_ctx)
        fb = state.get("feedback") if variant == "fa" and state is not None else None
        if variant == "fa" and fb is None and ctx is not None and ctx.train:
            raise ValueError(f"{op}: training mode needs the fixed feedback matrices: {_HOW}")
        return y, (t, fb)

    def backward(params, tape, dy):
        t, fb = tape
        inner = _inner(params)
        if twin or variant == "backprop":
            grads, deltas, dx = layer.backward(inner, t, dy)
        else:
            if variant == "fa":
                if fb is None:
                    raise ValueError(
                        f"{op}: the backward needs the fixed feedback matrices: {_HOW}"
                    )
                bs = fb
            elif variant == "sign":
                bs = {n: jnp.sign(params[n]) for n in weights}
            else:  # kp
                bs = params["feedback"]
            p, t = transport.substitute(inner, t, bs)
            grads, deltas, dx = layer.backward(p, t, dy)
        if variant == "kp":  # B learns with W's update (and weight decay, from the optimizer)
            grads = {**grads, "feedback": {n: grads[n] for n in weights}}
        return grads, deltas, dx

    def jvp(params, tape, dparams, dx):  # forward mode is the layer's own: B only goes backward
        return layer.jvp(_inner(params), tape[0], _inner(dparams), dx)

    def state_of(tape):
        t, fb = tape
        state = dict(layer.state_of(t))
        if variant == "fa":
            state["feedback"] = fb
        return state

    config = {**layer.config, "feedback": variant, "feedback_weights": weights}
    wrapped = Layer(
        layer.name,
        layer.kind,
        config,
        init_params,
        forward,
        backward,
        layer.output_shape,
        layer.children,
        init_state if variant == "fa" else layer.init_state,  # only FA adds state
        state_of,
        jvp if layer.jvp is not None else None,
    )
    if not twin:
        _TWINS[backward] = _feedback(layer, variant, weights, init, twin=True).backward
    return wrapped


def _targets(layers: Sequence[Layer]) -> list[Layer]:
    """The layers direct feedback reaches: every weighted layer (:data:`TRANSPORT`) but the
    first layer of the network."""
    return [c for i, c in enumerate(layers) if i > 0 and c.kind in TRANSPORT]


def _project(e: Any, b: Any, shape: Shape) -> Any:
    """e (..., C) @ B (C, F) reshaped to ``shape`` = (..., *trailing) with Π trailing = F."""
    lead = e.shape[:-1]
    flat = jnp.reshape(e, (math.prod(lead), e.shape[-1])) @ b
    return jnp.reshape(flat, shape)


def direct_feedback(
    *layers: Layer,
    name: str | None = None,
    init: Callable[..., Any] | None = None,
) -> Layer:
    """:func:`~manual_bp.nn.serial` trained by direct feedback alignment (Nøkland 2016).

    The forward pass, parameters and layer names are those of ``serial(*layers)``. In the
    backward pass the output error e = ∂C/∂(network output), of shape (..., C), goes straight
    to the input of every weighted layer but the first: the layer before it receives
    ∂C/∂(its output) := e B_l, with B_l (C, F) a fixed random matrix (F the size of that
    input per leading index: e.g. (N, C) → (N, H) for an MLP, (N, C) → (N, h·w·c) for a conv
    layer, (N, T, C) → (N, T, D) per time step). Each layer's own backward turns that into its
    δ = f'(z) ⊙ e B_l and aᵀδ as usual. The matrices live in the state under ``"_feedback"``
    (drawn from ``init_state``'s key; default init LeCun normal, variance 1/C).
    """
    return _direct_feedback(layers, name, init, twin=False)


def _direct_feedback(layers, name, init, *, twin):
    base = serial(*layers, name=name)
    named = base.children
    draw = init or jax.nn.initializers.lecun_normal()

    def init_state(key, input_shape, dtype=jnp.float32):
        state = base.init_state(key, input_shape, dtype)
        out = base.output_shape(tuple(input_shape))
        lead = len(out) - 1
        shape, shapes = tuple(input_shape), {}
        targets = {t.name for t in _targets(named)}
        for layer in named:
            if layer.name in targets:
                if tuple(shape[:lead]) != tuple(out[:lead]):
                    raise ValueError(
                        f"direct_feedback: the input of {layer.name!r} {shape} does not share "
                        f"the leading dims {tuple(out[:lead])} of the network output {out}"
                    )
                shapes[layer.name] = (out[-1], math.prod(shape[lead:]))
            shape = layer.output_shape(shape)
        state["_feedback"] = _draw(draw, jax.random.fold_in(key, 3), shapes, dtype)
        return state

    def forward(params, x, ctx=None):
        y, tape = base.forward(params, x, ctx)
        state = None if ctx is None else ctx.state
        bs = None if state is None else state.get("_feedback")
        if bs is None and ctx is not None and ctx.train:
            raise ValueError(f"direct_feedback: training mode needs the feedback matrices: {_HOW}")
        return y, (tape, bs)

    def backward(params, tape, dy):
        tapes, bs = tape
        if twin:
            return serial_backward(named, params, tapes, dy)
        if bs is None:
            raise ValueError(
                f"direct_feedback: the backward needs the fixed feedback matrices: {_HOW}"
            )
        e = dy  # the output error, before any layer has touched it

        def redirect(layer, dx):
            return _project(e, bs[layer.name], dx.shape) if layer.name in bs else dx

        return serial_backward(named, params, tapes, dy, redirect)

    def jvp(params, tape, dparams, dx):  # the forward mode of serial(*layers)
        return serial_jvp(named, params, tape[0], dparams, dx)

    def state_of(tape):
        tapes, bs = tape
        return {**base.state_of(tapes), "_feedback": bs}

    config = {"feedback": "dfa"}
    layer = Layer(
        name,
        "serial",
        config,
        base.init,
        forward,
        backward,
        base.output_shape,
        named,
        init_state,
        state_of,
        jvp,
    )
    if not twin:
        _TWINS[backward] = _direct_feedback(named, name, init, twin=True).backward
    return layer


def as_backprop(net: Layer) -> Layer:
    """``net`` with true backprop in every layer: the same params, state, forward and tapes,
    so its backward can run on a tape recorded by ``net`` (as :func:`alignment` does).

    Raises:
      TypeError: ``net`` is not a :class:`~manual_bp.nn.Layer`.
      ValueError: ``net`` holds a combinator other than ``serial``, ``residual`` and
        :func:`direct_feedback`, whose children it cannot rebuild.
    """
    if not isinstance(net, Layer):
        raise TypeError(f"as_backprop: expected a manual_bp.nn.Layer, got {net!r}")
    if net.backward in _TWINS:
        if net.config.get("feedback") == "dfa":
            twin_children = tuple(as_backprop(c) for c in net.children)
            rebuilt = _direct_feedback(twin_children, net.name, None, twin=True)
            return rebuilt
        return net._replace(backward=_TWINS[net.backward])
    if not net.children:
        return net
    children = tuple(as_backprop(c) for c in net.children)
    if net.kind == "serial":
        return serial(*children, name=net.name)
    if net.kind == "residual":
        return residual(children[0], name=net.name)
    raise ValueError(
        f"as_backprop: cannot rebuild a {net.kind!r} combinator (layer {net.name!r}); expected "
        "layers without children, serial, residual or direct_feedback"
    )


def alignment(net: Layer, loss: Rule | str) -> Callable[..., dict[str, dict[str, Any]]]:
    """``f(params, state, x, y, key=None) -> {"deltas": {name: °}, "grads": {name: °}}``.

    One forward pass in training mode, then two backward passes over its tape: ``net``'s own
    (feedback alignment, ...) and :func:`as_backprop`'s. For every layer, the angle between
    the two deltas ∂C/∂(output), and between the two weight gradients (all of a layer's
    ``w``-like arrays as one vector; the update an optimizer like SGD takes). 0° means the
    variant sends exactly backprop's direction; below 90° it still descends. Works under jit.
    """
    loss = get_rule(loss)
    twin = as_backprop(net)

    def f(params, state, x, y, key=None):
        check_input(net, x)
        check_params(net, params, x.shape)
        check_state(net, state, x.shape)
        out, tape = net.forward(params, x, Context(True, key, state))
        c, res = loss.fwd(out, y)
        dout = loss.bwd(res, jnp.ones_like(c))[0]
        g_var, d_var, _ = net.backward(params, tape, dout)
        g_bp, d_bp, _ = twin.backward(params, tape, dout)
        deltas = {k: angle(d_var[k], d_bp[k]) for k in d_var}
        return {"deltas": deltas, "grads": weight_angles(g_var, g_bp)}

    return f
