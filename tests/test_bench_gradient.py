"""``benchmarks/bench_gradient.py``'s variants and summary, on its committed validation runs
(the decodes themselves take minutes and are not run here)."""

from __future__ import annotations

import json
import os

import pytest

from tests.bench_scripts import ROOT, load_benchmark

RUNS = os.path.join(ROOT, "benchmarks", "results", "gradient", "bundled_rm")


def _load():
    return load_benchmark("bench_gradient")


def test_variants_are_valid_decode_configs():
    bench = _load()
    for name in bench.VARIANTS:
        bench.variant_config(name)  # each builds (DecodeConfig validates it)
    ceiling = bench.variant_config("ceiling")
    assert ceiling.oracle_proposals and not ceiling.use_dto
    assert bench.variant_config("lr0.3").dto.learning_rate == 0.3
    sharp = bench.variant_config("nodto-tau0.1")
    assert sharp.resample.temperature == 0.1 and sharp.resample.top_p == 0.95  # the rest kept


def test_summary_of_the_committed_runs():
    bench = _load()
    summary = bench.summarize(RUNS, "validation")
    with open(os.path.join(RUNS, "validation.summary.json")) as f:
        committed = json.load(f)["runs"]
    assert set(summary) == set(committed)
    for name, got in summary.items():
        want = committed[name]
        assert got["n"] == want["n"] == 80
        assert got["accuracy"] == pytest.approx(want["accuracy"])
        if "vs_nodto" in want:
            assert got["vs_nodto"] == want["vs_nodto"]
            assert got["difference"] == pytest.approx(want["difference"])
    nodto = summary["nodto_oracle"]
    assert "vs_nodto" not in nodto and nodto["dto"]["kl"] == 0
    text = bench.table(summary)
    assert text.count("\n") == 2 + len(summary)
    assert "| lr0.3 | oracle |" in text and "2 / 4" in text  # the committed paired counts
