"""XLA's memory count of the ∇-Reasoner programs from abstract inputs (``runtime.memory`` and
``benchmarks/bench_memory.py`` at a tiny shape; the 7B run is the benchmark's)."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import pytest

import nabla_jax as nj
from nabla_jax.runtime.memory import abstract, peak_bytes, program_memory
from tests.bench_scripts import load_benchmark


def _bench():
    return load_benchmark("bench_memory")


def _tiny_decode():
    # Small sizes so each program compiles in about a second.
    return nj.DecodeConfig(max_length=16, dto_window=4, max_n_generations=2,
                           dto=nj.DTOConfig(num_steps=2))  # fmt: skip


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def tiny_models(bench):
    return bench.abstract_models(bench.model_config(bench.TINY), "float32")


def test_abstract_inputs_allocate_no_buffers(bench):
    cfg = bench.model_config(bench.TINY)
    bench.abstract_models(cfg, "float32")  # imports and caches settle before counting
    before = len(jax.live_arrays())
    lm, rm = bench.abstract_models(cfg, "float32")
    x = bench.decode_inputs(lm, rm, _tiny_decode(), 2, 8, 8, 8)
    assert len(jax.live_arrays()) == before
    for tree in (lm.params, rm.params, x["state"], x["problems"], x["given"], x["ctx"]):
        leaves = [v for v in jax.tree.leaves(tree) if hasattr(v, "shape")]
        assert leaves and all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves)
    # the abstract LM holds what a real one would: the config's parameter count
    n = sum(v.size for v in jax.tree.leaves(lm.params))
    d, v = cfg.hidden_size, cfg.vocab_size
    assert n > 2 * d * v  # embeddings and the untied head at least


def test_temp_bytes_positive_and_grow_with_batch(bench, tiny_models):
    lm, rm = tiny_models
    dcfg = _tiny_decode()
    figs = {b: bench.measure("dto_step", bench.decode_inputs(lm, rm, dcfg, b, 8, 8, 8))
            for b in (1, 4)}  # fmt: skip
    for f in figs.values():
        assert f["temp_bytes"] > 0 and f["argument_bytes"] > 0
        assert f["peak_bytes"] == peak_bytes(f)
        # the donated DTO state comes back in place
        assert 0 < f["alias_bytes"] <= f["output_bytes"]
    assert figs[4]["temp_bytes"] > figs[1]["temp_bytes"]
    # float32 parameters: nothing to upcast, and XLA's buffer report gives the same temporary
    assert figs[1]["temp_breakdown"]["weight_upcast_bytes"] == 0
    assert figs[1]["temp_breakdown"]["temp_bytes"] == figs[1]["temp_bytes"]
    # the parameters are arguments at every batch; the per-row inputs grow
    assert figs[4]["argument_bytes"] > figs[1]["argument_bytes"]


def test_refine_program_in_bfloat16_counts_the_cpu_weight_upcasts(bench):
    lm, rm = bench.abstract_models(bench.model_config(bench.TINY), "bfloat16")
    f = bench.measure("refine", bench.decode_inputs(lm, rm, _tiny_decode(), 1, 8, 8, 8))
    params = bench.tree_bytes(lm.params) + bench.tree_bytes(rm.params)
    assert f["argument_bytes"] >= params and f["temp_bytes"] > 0
    # the CPU computes bfloat16 dots in float32: float32 copies of the weights in the temporary
    t = f["temp_breakdown"]
    assert 0 < t["weight_upcast_bytes"] < f["temp_bytes"]
    # XLA's live ranges: what is live at the busiest point fits in the temporary it packed,
    # and is less without the copies
    assert 0 < t["live_temp_less_upcast_bytes"] < t["live_temp_bytes"] <= f["temp_bytes"]
    assert f["peak_bytes"] - f["temp_bytes"] + t["live_temp_less_upcast_bytes"] > params
    assert f["temp_breakdown"]["largest"][0]["bytes"] > 0


def test_program_memory_of_a_known_program():
    # [256, 256] float32 in, the same out; the matmul's result is the output buffer.
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
    f = program_memory(jax.jit(lambda a: a @ a).lower(x).compile())
    assert f["argument_bytes"] == 256 * 256 * 4 and f["output_bytes"] == 256 * 256 * 4
    assert f["peak_bytes"] == peak_bytes(f) >= 2 * 256 * 256 * 4
    donated = program_memory(jax.jit(lambda a: a + 1, donate_argnums=0).lower(x).compile())
    assert donated["alias_bytes"] == 256 * 256 * 4
    assert donated["peak_bytes"] == donated["argument_bytes"] + donated["temp_bytes"]


def test_program_memory_without_analysis_raises():
    fake = types.SimpleNamespace(memory_analysis=lambda: None)
    with pytest.raises(ValueError, match="no memory analysis"):
        program_memory(fake)


def test_abstract_keeps_shapes_and_other_leaves():
    tree = {"a": jnp.ones((3, 2), jnp.bfloat16), "n": 7, "s": jax.ShapeDtypeStruct((1,), int)}
    out = abstract(tree)
    assert isinstance(out["a"], jax.ShapeDtypeStruct)
    assert out["a"].shape == (3, 2) and out["a"].dtype == jnp.bfloat16
    assert out["n"] == 7 and out["s"] is tree["s"]


def test_fit_batch_extrapolates_a_line(bench):
    gb = 1e9
    fit = bench.fit_batch({1: 31 * gb, 8: 38 * gb}, 80 * gb)  # 30 GB + 1 GB per row
    assert fit["bytes_per_row"] == pytest.approx(gb) and fit["fixed_bytes"] == pytest.approx(
        30 * gb
    )
    assert fit["largest_batch"] == 50
    assert bench.fit_batch({1: 90 * gb, 2: 91 * gb}, 80 * gb)["largest_batch"] == 0
    assert bench.fit_batch({4: gb}, 80 * gb)["largest_batch"] is None


def test_cli_rejects_unknown_program(bench):
    with pytest.raises(SystemExit):
        bench.main(["--programs", "iteration,decode_all", "--output", ""])
