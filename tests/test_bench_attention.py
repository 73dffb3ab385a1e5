"""Smoke test of the attention scaling benchmark (``python -m benchmarks.attention_scaling``):
its smallest configuration measures the three variants, writes a well-formed report and its
two log-log figures. No timing thresholds: times are read from the table, never asserted."""

import json

import jax
import jax.numpy as jnp

from manual_bp import nn
from manual_bp.bench.attention import ATTENTION_VARIANTS, attention_markdown, main, tape_bytes


def test_a_tiny_run_writes_its_tables_and_figures(tmp_path):
    out = tmp_path / "att"
    argv = ["--lengths", "16", "32", "--block", "8", "--time-up-to", "16"]
    argv += ["--causal-lengths", "32", "--repeats", "1", "--out", str(out), "--plot", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "attention_scaling.json").read_text(encoding="utf-8"))
    assert list(results["lengths"]) == ["16", "32"]
    for t, rows in results["lengths"].items():
        assert list(rows) == list(ATTENTION_VARIANTS)
        for name, r in rows.items():
            m = r["xla_memory_bytes"]
            assert m["temp"] > 0 and m["argument"] > 0 and m["output"] > 0, m
            assert m["total"] == m["temp"] + m["argument"] + m["output"] - m["alias"]
            assert (r["tape_bytes"] is None) == (name == "jax.grad")
            assert ("step" in r) == (t == "16"), (t, name)
    assert results["lengths"]["16"]["jax.grad"]["over_jax_grad"] == 1.0
    assert results["causal"]["32"]["causal_over_full"] > 0
    text = (out / "attention_scaling.md").read_text(encoding="utf-8")
    assert text == attention_markdown(results)
    assert "| 32 | blockwise | " in text and "causal / full" in text
    for png in ("attention_memory.png", "attention_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_blockwise_tape_grows_linearly_and_the_plain_one_quadratically():
    """The tape's bytes from the forward's shapes (nothing compiled): doubling T doubles the
    blockwise network's tape (affine: embeddings and MLP are linear too) and more than
    doubles the plain rule's, which holds T×T probabilities per head."""

    def tape(t, block_size):
        net = nn.TransformerLM(64, max_len=t, features=64, num_heads=4, block_size=block_size)
        ids = jnp.zeros((2, t), jnp.int32)
        return tape_bytes(net, net.init(jax.random.key(0), ids.shape), ids)

    blockwise = tape(128, 16) / tape(64, 16)
    plain = tape(128, None) / tape(64, None)
    assert 1.9 < blockwise <= 2.0 + 1e-9, blockwise
    assert plain > 2.3, plain
    assert tape(128, 16) < tape(128, None)
