"""Pieces of ``benchmarks/bench_decode.py`` that run in seconds.

The reduced benchmark itself (``--num-problems 4 --batch-sizes 1,8``) starts five fresh
processes, two of them compiling every decode program from an empty cache: minutes on a
2-core machine, so it is not run here.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from tests.bench_scripts import load_benchmark


def _load():
    return load_benchmark("bench_decode")


def test_compile_counter_counts_backend_compiles():
    bench = _load()
    counter = bench.CompileCounter()
    before = counter.snapshot()
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    f(jnp.arange(7.0)).block_until_ready()
    first = counter.since(before)
    assert first["compile_requests"] >= 1 and first["compile_s"] > 0
    assert first["compiles"] == first["compile_requests"] - first["cache_hits"]
    mid = counter.snapshot()
    f(jnp.arange(7.0)).block_until_ready()  # in-memory cache: no new request
    assert counter.since(mid)["compile_requests"] == 0


def test_twin_worker_reports_a_summary(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    bench = _load()
    out = tmp_path / "twin.json"
    args = ["--worker", "twin", "--num-problems", "2", "--torch-threads", "1"]
    result = bench.main(args + ["--result", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["torch_threads"] == 1 and result["seconds"] > 0
    assert 0 <= result["accuracy"] <= 1
    assert result["mean_generations"] >= 1 and result["mean_model_calls"] > 0
