"""Gradient diagnostics of the decoder: what DTO did to the resample distribution at each
refinement (nabla_jax.decoding.diagnostics), against a PyTorch twin and in real decodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import nabla_jax as nj
from nabla_jax.app.bundled import bundled_decode_config, load_bundled
from nabla_jax.decoding import SamplingConfig
from nabla_jax.decoding.diagnostics import diagnose
from nabla_jax.tasks import arithmetic
from nabla_jax.tasks.oracle import ReferenceNextToken
from nabla_jax.tasks.registry import get_task
from tests import tolerances as tol
from tests.reference import torch_diagnostics as ref


@pytest.mark.parity
@pytest.mark.parametrize("exclude", [False, True])
def test_diagnose_matches_torch_twin(exclude):
    rng = np.random.RandomState(0)
    b, v = 6, 97
    original = rng.randn(b, v).astype(np.float32) * 3
    refined = original + rng.randn(b, v).astype(np.float32) * 0.5
    refined[0] = original[0]  # DTO left it alone
    current = rng.randint(0, v, b)
    proposed = (current + 1 + rng.randint(0, v - 1, b)) % v
    right = np.array([3, -1, 5, 7, -1, 11])
    right[3] = int(np.argsort(original[3])[-2 if current[3] == original[3].argmax() else -1])
    # (row 3: the right token is the original resample's top-1)
    cfg = nj.DecodeConfig(resample=SamplingConfig(temperature=0.7),
                          resample_excludes_current=exclude)  # fmt: skip
    j = lambda x: jnp.asarray(x)
    got = diagnose(j(original), j(refined), j(current), j(proposed), j(right), cfg.hyper(),
                   prog=cfg.program())  # fmt: skip
    t = lambda x: torch.from_numpy(np.asarray(x))
    kl, dlogp, top1, topk, before, after, new_before, new_after, right_top1 = ref.diagnose(
        t(original), t(refined), t(current), t(proposed), t(right), 0.7, exclude
    )
    # log-softmax of V terms in float32 against float64: each log-probability is within a few
    # ulps of the logits' scale plus the V-term log-sum-exp's γ_V; the KL sums V such terms
    # weighted by probabilities (Σp = 1), so it inherits the same bound.
    scale = float(np.abs(np.concatenate([original, refined])).max() / 0.7) + 1.0
    per_logp = 2 * (tol.gamma(v) + tol.ULPS_PER_TRANSCENDENTAL * tol.U32) * scale
    tol.assert_within(got.kl, kl.numpy(), 2 * per_logp, "KL")
    tol.assert_within(got.dlogp, dlogp.numpy(), 2 * per_logp, "dlogp")
    tol.assert_within(got.p_right_before, before.numpy(), per_logp, "p(right) before")
    tol.assert_within(got.p_right_after, after.numpy(), per_logp, "p(right) after")
    tol.assert_within(got.p_new_before, new_before.numpy(), per_logp, "p(new) before")
    tol.assert_within(got.p_new_after, new_after.numpy(), per_logp, "p(new) after")
    assert np.array_equal(got.top1_changed, top1.numpy())
    assert np.array_equal(got.topk_changed, topk.numpy())
    assert np.array_equal(got.right_top1_before, right_top1.numpy())
    assert bool(got.right_top1_before[3]) and not bool(got.right_top1_before[1])
    assert float(got.kl[0]) == 0.0 and not bool(got.topk_changed[0])  # unchanged logits
    assert float(got.p_right_before[1]) == 0.0  # no oracle answer


def test_reference_next_token_names_the_solution_token():
    lm, _ = load_bundled()
    problem = arithmetic.fresh_test_problems(1, seed=5)[0]
    oracle = ReferenceNextToken(get_task(), [problem], lm.tokenizer)
    prompt = nj.text.templates.lm_prompt_ids(lm.tokenizer, arithmetic.format_prompt(problem))
    sol = lm.tokenizer.encode(problem.solution, add_special_tokens=False)
    assert oracle(prompt, sol[:3]) == sol[3]
    assert oracle(prompt, []) == sol[0]
    wrong = list(sol[:3])
    wrong[1] = sol[1] + 1 if sol[1] + 1 != sol[1] else sol[1] - 1
    assert oracle(prompt, wrong) == -1  # off the reference path: no right token
    assert oracle([1, 2, 3], sol[:3]) == -1  # an unknown prompt


@pytest.fixture(scope="module")
def bundled_runs():
    lm, rm = load_bundled()
    problems = arithmetic.fresh_test_problems(6, seed=11)
    prompts = [arithmetic.format_prompt(p) for p in problems]
    oracle = ReferenceNextToken(get_task(), problems, lm.tokenizer)
    out = {}
    for use_dto in (True, False):
        cfg = bundled_decode_config(use_dto=use_dto, max_n_generations=4)
        dec = nj.NablaDecoder(lm, rm, cfg, next_token_oracle=oracle)
        out[use_dto] = dec.generate(prompts, jax.random.key(0))
    plain = nj.NablaDecoder(lm, rm, bundled_decode_config(max_n_generations=4))
    out["plain"] = plain.generate(prompts, jax.random.key(0))
    # An oracle that always names one digit: the resample rarely draws it by itself (on the
    # bundled task the reference oracle's right token is usually the draw already).
    (seven,) = lm.tokenizer.encode("7", add_special_tokens=False)
    out["seven"] = seven
    cfg = bundled_decode_config(use_dto=False, max_n_generations=4, oracle_proposals=True)
    ceiling = nj.NablaDecoder(lm, rm, cfg, next_token_oracle=lambda prompt, response: seven)
    out["ceiling"] = ceiling.generate(prompts, jax.random.key(0))
    return out


def test_trace_records_what_dto_did(bundled_runs):
    events = [t for r in bundled_runs[True] for t in r.trace]
    assert events, "no refinement ran"
    assert all(t["kl"] >= 0 for t in events)
    assert any(t["kl"] > 0 for t in events)  # the gradient moved the distribution somewhere
    for t in events:  # the proposed token's probabilities agree with its Δlog p
        assert 0 <= t["p_new_before"] <= 1 and 0 <= t["p_new_after"] <= 1
        if min(t["p_new_before"], t["p_new_after"]) > 1e-6:  # both log-probabilities O(10)
            np.testing.assert_allclose(
                np.log(t["p_new_after"] / t["p_new_before"]), t["dlogp"], rtol=0, atol=1e-4
            )  # float32 rounding
    known = [t for t in events if t["right_token"] is not None]
    assert known and all(0 <= t["p_right_before"] <= 1 for t in known)
    # The oracle only observes: the same tokens and counters as without it.
    plain = bundled_runs["plain"]
    assert [r.token_ids for r in bundled_runs[True]] == [r.token_ids for r in plain]
    assert [r.stats for r in bundled_runs[True]] == [r.stats for r in plain]


def test_without_dto_nothing_changes(bundled_runs):
    events = [t for r in bundled_runs[False] for t in r.trace]
    assert events
    for t in events:
        assert t["kl"] == 0 and t["dlogp"] == 0 and not t["top1_changed"]
        assert not t["topk_changed"] and t["p_new_before"] == t["p_new_after"]
        if t["right_token"] is not None:
            assert t["p_right_before"] == t["p_right_after"]


def test_decoder_refuses_a_non_callable_oracle():
    lm, rm = load_bundled()
    with pytest.raises(TypeError, match="next_token_oracle"):
        nj.NablaDecoder(lm, rm, bundled_decode_config(), next_token_oracle=3)


def test_oracle_proposals_propose_the_right_token(bundled_runs):
    seven = bundled_runs["seven"]
    events = [t for r in bundled_runs["ceiling"] for t in r.trace]
    assert events and all(t["right_token"] == seven for t in events)
    fixable = [t for t in events if t["old_token"] != seven]
    assert fixable and all(t["new_token"] == seven for t in fixable)
    # Where "7" is already in place the resample's draw stands, without the current token.
    assert all(t["new_token"] != t["old_token"] for t in events)
    # Without the option the same loop draws other tokens.
    plain = [t for r in bundled_runs[False] for t in r.trace]
    assert sum(t["new_token"] != seven for t in plain) > len(plain) // 2


def test_oracle_proposals_need_an_oracle_and_one_position():
    lm, rm = load_bundled()
    cfg = bundled_decode_config(oracle_proposals=True)
    with pytest.raises(ValueError, match="next_token_oracle=.*tasks.oracle.ReferenceNextToken"):
        nj.NablaDecoder(lm, rm, cfg)  # (the class it names is the one imported above)
    with pytest.raises(ValueError, match="positions_per_iteration"):
        bundled_decode_config(oracle_proposals=True, positions_per_iteration=2)
    with pytest.raises(ValueError, match="oracle_proposals"):
        bundled_decode_config(oracle_proposals=1)
