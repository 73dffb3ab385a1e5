"""``manual_bp.as_primitive``: every registered rule with a jvp, under every transformation,
equals the same transformation of the independent reference forward, in float64.

Per audit-table row (its first shape), one jitted float64 program computes, for the
primitive and for the reference alike: ``jax.jvp``, ``jax.linearize``, ``jax.jacfwd``,
``jax.jacrev``, ``jax.grad`` of ⟨c, f⟩, ``jax.hessian`` of it in the first differentiable
primal, Hessian-vector products forward over reverse and reverse over reverse, ``vmap`` of
``grad`` and of ``jvp`` over two stacked inputs, and ``lax.scan`` of ``grad`` over them.
Tangents, cotangents and directions are random. The first row of each rule is checked by
default, the other rows (settings) in the slow sweep; a row's default test reads the sweep's
results when both are selected. Then: the gradient's jaxpr holds the handwritten
``<rule>_bwd`` primitive and the tangent's ``<rule>_jvp``, and a rule with a planted wrong
bwd (or jvp) makes ``jax.grad`` (or ``jax.jvp``) of the primitive wrong.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import manual_bp
from manual_bp import RULES, Rule
from manual_bp.verify.oracles import bind, reference_forward
from manual_bp.verify.table import F64, ROWS
from manual_bp.verify.tolerances import compare, tolerance_for

F64_TOL = tolerance_for(F64)
WITH_JVP = [row for row in ROWS if RULES[row.rule].jvp is not None]
FIRST = {}
for _row in WITH_JVP:
    FIRST.setdefault(_row.rule, _row)


def _random_like(rng, xs):
    return tuple(jnp.asarray(rng.standard_normal(np.shape(x)), F64) for x in xs)


FIRST_ORDER = ("out", "jvp", "grad", "vmap_grad")
"""What every rule is checked on by default; :data:`FULL` rules and the slow sweep get all."""
FULL = ("tanh", "dense", "conv2d", "rnn", "last_step")


def _transformations(fns, primals, diff, keys):
    """The transformations ``keys`` of each of ``fns`` in the differentiable primals, as one
    jitted function of (diff primals, tangents, cotangent, directions, a second set of diff
    primals) returning one dict per function (one compile for the primitive and the
    reference together)."""

    def transformations(fn, d, t, c, v, d2):
        f = bind(fn, primals, diff)
        argnums = tuple(range(len(d)))
        loss = lambda *d: jnp.vdot(c, f(*d))  # noqa: E731
        grad = jax.grad(loss, argnums=argnums)
        stacked = tuple(jnp.stack([a, b]) for a, b in zip(d, d2, strict=True))
        tangents = tuple(jnp.stack([a, -a]) for a in t)
        every = {
            "out": lambda: f(*d),
            "jvp": lambda: jax.jvp(f, d, t)[1],
            "linearize": lambda: jax.linearize(f, *d)[1](*t),
            "jacfwd": lambda: jax.jacfwd(f, argnums=argnums)(*d),
            "jacrev": lambda: jax.jacrev(f, argnums=argnums)(*d),
            "grad": lambda: grad(*d),
            "hessian": lambda: jax.hessian(lambda x: loss(x, *d[1:]))(d[0]),
            "hvp_fwd_over_rev": lambda: jax.jvp(grad, d, v)[1],
            "hvp_rev_over_rev": lambda: jax.grad(
                lambda *d: sum(jnp.vdot(g, w) for g, w in zip(grad(*d), v, strict=True)),
                argnums=argnums,
            )(*d),
            "vmap_grad": lambda: jax.vmap(grad)(*stacked),
            "vmap_jvp": lambda: jax.vmap(lambda d, t: jax.jvp(f, d, t)[1])(stacked, tangents),
            "scan_grad": lambda: lax.scan(lambda k, ds: (k, grad(*ds)), 0.0, stacked)[1],
        }
        return {k: every[k]() for k in keys}

    def run(*args):
        return tuple(transformations(fn, *args) for fn in fns)

    return jax.jit(run)


ALL = (
    "out", "jvp", "linearize", "jacfwd", "jacrev", "grad", "hessian", "hvp_fwd_over_rev",
    "hvp_rev_over_rev", "vmap_grad", "vmap_jvp", "scan_grad",
)  # fmt: skip


def _case(row, seed=0):
    rng = np.random.default_rng(seed)
    primals = row.make(rng, row.shapes[0], F64, "normal")
    second = row.make(rng, row.shapes[0], F64, "normal")
    d = tuple(primals[i] for i in row.diff)
    d2 = tuple(second[i] for i in row.diff)
    return primals, d, _random_like(rng, d), _random_like(rng, d), d2, rng


def _compare_trees(got, want, what):
    """Each leaf of ``got`` against ``want``, judged on the scale of its whole result (the
    largest entry of any of its leaves: a bias gradient that is exactly 0 is held to the
    rounding of the others, not to 0)."""
    bad = []
    floor = max(float(np.max(np.abs(e), initial=0)) for e in jax.tree.leaves(want))
    for (path, a), e in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        cmp = compare(a, e, F64, F64_TOL, floor, jax.tree_util.keystr(path), what)
        if not cmp.ok:
            bad.append(f"{cmp.primal}: max abs error {cmp.max_abs:.3g} at {cmp.worst_index}")
    return bad


@functools.cache
def _check_row(row, keys) -> dict[str, list[str]]:
    """The transformations ``keys`` of the primitive against the reference's at the row's
    first shape: the findings per transformation (cached, so that the default test of a row
    reads the full sweep's results when both run in this process)."""
    rule = RULES[row.rule]
    primals, d, t, v, d2, rng = _case(row)
    ours = manual_bp.as_primitive(rule, **row.static)
    ref = reference_forward(rule)
    theirs = lambda *p: ref(*p, **row.static)  # noqa: E731
    c = jnp.asarray(rng.standard_normal(jax.eval_shape(ours, *primals).shape), F64)
    got, want = _transformations((ours, theirs), primals, row.diff, keys)(d, t, c, v, d2)
    return {k: _compare_trees({k: got[k]}, {k: want[k]}, "the reference") for k in keys}


def _findings(row, keys, computed=None) -> list[str]:
    """The findings of ``keys``, read from the results of ``computed`` keys (a superset)."""
    bad = _check_row(row, keys if computed is None else computed)
    return [b for k in keys for b in bad[k]]


@pytest.fixture
def sweep_selected(request, row) -> bool:
    """Whether this session runs the row's ``test_every_transformation_matches_the_reference``."""
    name = f"test_every_transformation_matches_the_reference[{row.id}]"
    return any(i.name == name and i.module is request.module for i in request.session.items)


def _grouped(row, *marks):
    """A case of ``row``, run next to the row's other case in this module (tests/conftest.py
    orders a ``together`` group), so that both read one evaluation."""
    group = pytest.mark.together(f"primitive:{row.id}")
    return pytest.param(row, id=row.id, marks=(group, *marks))


@pytest.mark.parametrize("row", [_grouped(r) for r in FIRST.values()])
def test_every_rule_first_order(row, sweep_selected):
    """jax.jvp, jax.grad and vmap(grad) of the primitive equal the reference's, every rule
    (read from the row's full sweep when that is selected too: the same seed and inputs)."""
    bad = _findings(row, FIRST_ORDER, ALL if sweep_selected else None)
    assert not bad, f"{row.id}: " + "; ".join(bad)


@pytest.mark.parametrize(
    "row",
    [
        _grouped(row, *(() if FIRST[row.rule] is row and row.rule in FULL else [pytest.mark.slow]))
        for row in WITH_JVP
    ],
)
def test_every_transformation_matches_the_reference(row):
    """All twelve transformations (second order included): the FULL rules by default, every
    row of the table in the slow sweep."""
    bad = _findings(row, ALL)
    assert not bad, f"{row.id}: " + "; ".join(bad)


@pytest.mark.parametrize("name", ["conv2d", "last_step"])
def test_eager_calls_run_the_primitives_impl(name):
    """Outside jit the primitives evaluate their Python functions directly (conv2d: array
    residuals and static keywords; last_step: a residual that is a Python tuple)."""
    row = FIRST[name]
    primals, d, t, _, _, rng = _case(row)
    ours = bind(manual_bp.as_primitive(name, **row.static), primals, row.diff)
    ref = reference_forward(RULES[name])
    theirs = bind(lambda *p: ref(*p, **row.static), primals, row.diff)
    got, want = jax.jvp(ours, d, t), jax.jvp(theirs, d, t)
    c = jnp.asarray(rng.standard_normal(got[0].shape), F64)
    argnums = tuple(range(len(d)))
    got_g = jax.grad(lambda *d: jnp.vdot(c, ours(*d)), argnums=argnums)(*d)
    want_g = jax.grad(lambda *d: jnp.vdot(c, theirs(*d)), argnums=argnums)(*d)
    assert not _compare_trees((got, got_g), (want, want_g), "the reference")


def test_the_handwritten_rules_are_what_runs():
    """The gradient's jaxpr binds ``tanh_bwd`` (the jvp primitive transposed), the tangent's
    binds ``tanh_jvp``, and neither holds JAX's own derivative of tanh."""
    tanh = manual_bp.as_primitive("tanh")
    x = jnp.linspace(-2.0, 2.0, 5, dtype=F64)
    grad_jaxpr = jax.make_jaxpr(jax.grad(lambda x: tanh(x).sum()))(x)
    jvp_jaxpr = jax.make_jaxpr(lambda x, t: jax.jvp(tanh, (x,), (t,)))(x, x)
    grad_prims = [e.primitive.name for e in grad_jaxpr.jaxpr.eqns]
    jvp_prims = [e.primitive.name for e in jvp_jaxpr.jaxpr.eqns]
    assert grad_prims.count("tanh_bwd") == 1 and "tanh_jvp" not in grad_prims
    assert jvp_prims.count("tanh_jvp") == 1 and "tanh_bwd" not in jvp_prims
    assert "tanh" in grad_prims and "mul" not in grad_prims + jvp_prims


def _planted(name, bwd_scale=1.0, jvp_scale=1.0):
    rule = RULES[name]
    return Rule(
        name + "_planted",
        rule.fwd,
        lambda res, g, **kw: tuple(bwd_scale * a for a in rule.bwd(res, g, **kw)),
        lambda res, *t, **kw: jvp_scale * rule.jvp(res, *t, **kw),
    )


@pytest.mark.parametrize("name", ["tanh", "softmax"])
def test_a_planted_wrong_bwd_makes_grad_wrong_and_a_wrong_jvp_makes_jvp_wrong(name):
    """A bwd scaled by 1.001 shows in jax.grad and jax.jacrev of the primitive, not in
    jax.jvp; a jvp scaled by 1.001 shows in jax.jvp and jax.jacfwd, not in jax.grad."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 4)), F64)
    t = jnp.asarray(rng.standard_normal((3, 4)), F64)
    c = jnp.asarray(rng.standard_normal((3, 4)), F64)
    ref = reference_forward(RULES[name])
    want_grad = jax.grad(lambda x: jnp.vdot(c, ref(x)))(x)
    want_jvp = jax.jvp(ref, (x,), (t,))[1]

    def ok(got, want):
        return compare(np.asarray(got), np.asarray(want), F64, F64_TOL, 0.0, "x", "ref").ok

    for bwd_scale, jvp_scale in ((1.001, 1.0), (1.0, 1.001)):
        f = manual_bp.as_primitive(_planted(name, bwd_scale, jvp_scale))
        grad = jax.grad(lambda x, f=f: jnp.vdot(c, f(x)))(x)
        tangent = jax.jvp(f, (x,), (t,))[1]
        assert ok(grad, want_grad) is (bwd_scale == 1.0)
        assert ok(jax.jacrev(f)(x), jax.jacrev(ref)(x)) is (bwd_scale == 1.0)
        assert ok(tangent, want_jvp) is (jvp_scale == 1.0)
        assert ok(jax.jacfwd(f)(x), jax.jacfwd(ref)(x)) is (jvp_scale == 1.0)


def test_integer_labels_take_no_tangent_and_static_keywords_are_bound():
    """softmax_cross_entropy with integer labels: the labels are primals without a tangent; a
    static keyword (softmax's axis) reaches fwd, jvp and bwd."""
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.standard_normal((4, 5)), F64)
    labels = jnp.asarray(rng.integers(0, 5, size=4), jnp.int32)
    xent = manual_bp.as_primitive("softmax_cross_entropy")
    ref = reference_forward(RULES["softmax_cross_entropy"])
    got = jax.value_and_grad(lambda z: xent(z, labels))(logits)
    want = jax.value_and_grad(lambda z: ref(z, labels))(logits)
    assert not _compare_trees(got, want, "the reference")
    softmax0 = manual_bp.as_primitive("softmax", axis=0)
    ref_softmax = reference_forward(RULES["softmax"])
    got = jax.jvp(softmax0, (logits,), (logits,))
    want = jax.jvp(lambda z: ref_softmax(z, axis=0), (logits,), (logits,))
    assert not _compare_trees(got, want, "the reference")
    assert softmax0.static == {"axis": 0} and softmax0.rule is RULES["softmax"]
