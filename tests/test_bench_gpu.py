"""``benchmarks/bench_gpu.py --tiny`` on the CPU: the 7B GPU benchmark at tiny shapes."""

from __future__ import annotations

import json

import jax

import nabla_jax as nj
from tests.bench_scripts import load_benchmark


def _load():
    return load_benchmark("bench_gpu")


def test_dto_step_flops_counts_window_not_prefix():
    bench = _load()
    c = nj.ModelConfig(**bench.TINY)
    one = bench.dto_step_flops(c, 1, prefix=16, window=8, rm_prefix=16, suffix=4)
    assert bench.dto_step_flops(c, 4, 16, 8, 16, 4) == 4 * one
    # A longer prefix only adds attention keys: far less than a longer window.
    assert (
        bench.dto_step_flops(c, 1, 32, 8, 32, 4) - one
        < bench.dto_step_flops(c, 1, 16, 16, 16, 4) - one
    )


def test_bench_gpu_tiny(tmp_path):
    bench = _load()
    out = tmp_path / "gpu.json"
    result = bench.main(
        ["--tiny", "--batch-sizes", "2", "--dto-batch-sizes", "2", "--output", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["models"]["shape"] == "tiny" and saved["models"]["dtype"] == "float32"
    check = result["flops_check"]
    assert 0.8 < check["forward_ratio"] < 1.25 and 0.8 < check["forward_backward_ratio"] < 1.25
    (dto,) = result["dto"]
    assert dto["step_s"] > 0 and 0 < dto["mfu"] < 1
    assert dto["model_calls_per_row"] == 4 * dto["steps"]  # caching off: every step is full
    (roll,) = result["rollout"]
    assert roll["tokens_per_s"] > 0
    (dec,) = result["decode"]
    assert dec["prompts"] == 2 and dec["mean_generations"] == 3  # random models always propose
    # Parameters were drawn in the requested dtype straight from the shapes.
    lm, rm, tok = bench.build_models(bench._parse(["--tiny", "--dtype", "bfloat16"]))
    assert {x.dtype.name for x in jax.tree.leaves(lm.params)} == {"bfloat16"}
    assert tok.apply_chat_template([{"role": "user", "content": "w9"}], tokenize=False)
