"""Every DecodeConfig switch and every ablation, through the public API on the bundled models.

The assertions are about behaviour any correct implementation has: the counters add up, without
rejection sampling every proposal is accepted, an ablation without DTO makes no DTO calls, the
DTO window is as long as the setting says (so ``optimized_tokens`` is predictable from the trace),
and so on. Short responses (≤ 32 tokens), 2 prompts, 4 DTO steps.
"""

from __future__ import annotations

import dataclasses

import jax
import pytest

import nabla_jax as nj
from nabla_jax.app.bundled import BUNDLED_LM, bundled_decode_config, load_bundled
from nabla_jax.decoding import registry
from nabla_jax.decoding.baselines import greedy_cot
from nabla_jax.tasks import format_prompt, fresh_test_problems
from nabla_jax.tasks.registry import get_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BUNDLED_LM / "config.json").exists(), reason="bundled models missing"),
]

STEPS = 4
MAX_LEN = 32


@pytest.fixture(scope="module")
def setup():
    lm, rm = load_bundled()
    prompts = [format_prompt(p) for p in fresh_test_problems(2, 0)]
    base = bundled_decode_config(
        max_length=MAX_LEN, max_n_generations=3, batch_size=2, dto_window=4,
        dto=nj.DTOConfig(num_steps=STEPS, learning_rate=0.01),
    )  # fmt: skip
    return lm, rm, prompts, base


def _decode(setup, **changes):
    lm, rm, prompts, base = setup
    cfg = dataclasses.replace(base, **changes)
    return nj.NablaDecoder(lm, rm, cfg).generate(prompts, jax.random.key(0)), cfg


def _run(setup, method):
    lm, rm, prompts, base = setup
    return registry.method_runner(method, lm, rm, base, answer_extractor=get_task().vote_key)(
        prompts, jax.random.key(0)
    )


def _check_counters(r, cfg):
    s = r.stats
    assert s["model_calls"] == (
        s["rollout_calls"] + s["dto_calls"] + s["probe_calls"] + s["score_calls"]
    )
    proposals = [t for t in r.trace if t["proposed"]]
    assert all(t["accepted"] is None for t in r.trace if not t["proposed"])
    assert s["rejections"] == sum(t["accepted"] is False for t in proposals)
    assert s["generations"] == 1 + len(proposals)  # every proposal is rolled out
    assert s["generations"] <= cfg.max_n_generations
    assert len(r.token_ids) <= cfg.max_length
    if not cfg.uses_probe:
        assert s["probe_calls"] == 0 and s["probes"] == 0
    if cfg.use_dto:
        assert s["refinements"] == len(r.trace)
        # one full DTO step (4 calls) at least per refinement, at most num_steps
        assert 4 * s["refinements"] <= s["dto_calls"] <= 4 * STEPS * s["refinements"]


def _window_tokens(r, window):
    """optimized_tokens predicted from the trace when the response never changed (no accepted
    proposal): each refinement optimises min(window, rest of the response) positions."""
    n = len(r.token_ids)
    return STEPS * sum(n - t["position"] if window is None else min(window, n - t["position"])
                       for t in r.trace)  # fmt: skip


def test_default_switches(setup):
    results, cfg = _decode(setup)
    assert any(r.trace for r in results), "positions must be selected for this test to mean much"
    windows_checked = proposals = 0
    for r in results:
        _check_counters(r, cfg)
        if not any(t["accepted"] for t in r.trace):
            assert r.stats["optimized_tokens"] == _window_tokens(r, 4)
            windows_checked += 1
        margin = cfg.accept_margin or 0.0  # the bundled settings accept by a margin of 4
        for t in r.trace:  # rejection sampling: accepted exactly when the RM prefers the proposal
            if t["proposed"]:
                assert t["accepted"] == (t["score_proposed"] > t["score_current"] + margin)
                proposals += 1
    assert windows_checked and proposals


def test_without_rejection_sampling_every_proposal_is_accepted(setup):
    results, cfg = _decode(setup, rejection_sampling=False)
    assert any(t["proposed"] for r in results for t in r.trace), "no proposal was made"
    for r in results:
        _check_counters(r, cfg)
        assert r.stats["rejections"] == 0 and r.stats["score_calls"] == 0
        assert all(t["accepted"] is True for t in r.trace if t["proposed"])


@pytest.mark.parametrize("window", [None, 1])
def test_dto_window(setup, window):
    """dto_window=None optimises the whole rest of the response; 1 only the selected token."""
    results, cfg = _decode(setup, dto_window=window, max_n_generations=2)
    checked = 0
    for r in results:
        _check_counters(r, cfg)
        if not any(t["accepted"] for t in r.trace):
            assert r.stats["optimized_tokens"] == _window_tokens(r, window)
            checked += 1
    assert checked
    if window == 1:
        assert all(r.stats["optimized_tokens"] == STEPS * r.stats["refinements"] for r in results)


def test_ablation_nodto_makes_no_dto_calls(setup):
    lm, rm, prompts, base = setup
    for r in _run(setup, "nabla-nodto"):
        _check_counters(r, dataclasses.replace(base, use_dto=False))
        assert r.stats["dto_calls"] == 0 and r.stats["optimized_tokens"] == 0
        assert r.stats["refinements"] == 0


def test_ablation_norej_accepts_everything(setup):
    _, _, _, base = setup
    for r in _run(setup, "nabla-norej"):
        _check_counters(r, dataclasses.replace(base, rejection_sampling=False))
        assert r.stats["rejections"] == 0 and r.stats["score_calls"] == 0


def test_ablation_nocache_runs_every_step_in_full(setup):
    _, _, _, base = setup
    for r in _run(setup, "nabla-nocache"):
        _check_counters(r, base)
        assert r.stats["dto_calls"] == 4 * STEPS * r.stats["refinements"]


def test_entropy_threshold_selects_positions(setup):
    lm, _, prompts, _ = setup
    # No position has entropy ≥ 100 nats: nothing is selected, the response is the greedy one.
    results, cfg = _decode(setup, confidence_threshold=None, entropy_threshold=100.0)
    greedy = greedy_cot(lm, prompts, max_length=MAX_LEN)
    for r, g in zip(results, greedy):
        assert r.trace == [] and r.stats["refinements"] == 0 and r.stats["generations"] == 1
        assert r.token_ids == g.token_ids
    # A tiny threshold selects positions.
    results, cfg = _decode(setup, confidence_threshold=None, entropy_threshold=1e-3)
    assert all(r.trace for r in results)
    for r in results:
        _check_counters(r, cfg)


def test_system_message_reaches_the_lm(setup):
    """With selection off (no top-1 probability is ≤ 0), decoding is the greedy rollout of the
    templated prompt: with a system message it equals greedy CoT with that system message, and
    differs from none."""
    lm, _, prompts, _ = setup
    system = "Answer with a single number."
    off = dict(confidence_threshold=0.0, entropy_threshold=None)
    with_sys, _ = _decode(setup, system=system, **off)
    without, _ = _decode(setup, **off)
    ref = greedy_cot(lm, prompts, max_length=MAX_LEN, system=system)
    assert [r.token_ids for r in with_sys] == [g.token_ids for g in ref]
    assert [r.token_ids for r in with_sys] != [r.token_ids for r in without]
