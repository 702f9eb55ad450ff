"""Exploration options of the ∇-Reasoner loop, the oracle acceptance scorer, the method registry
and the accuracy statistics (tiny random models; the paper default's parity is held by
test_torch_decode_reference)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nabla_jax.app.stats import bootstrap_ci, paired_comparison, paired_difference_ci
from nabla_jax.decoding import NablaDecoder
from nabla_jax.decoding.registry import method_runner, parse_methods, run_baseline
from nabla_jax.decoding.steps.refine import gap_learning_rate
from nabla_jax.decoding.steps.resample import resample_tokens
from nabla_jax.decoding.steps.select import rank_threshold
from nabla_jax.tasks import generate, get_task
from nabla_jax.tasks.arithmetic_oracle import oracle_score, reference_steps
from nabla_jax.tasks.oracle import OracleScorer
from nabla_jax.text.templates import rm_prefix_suffix_ids
from tests import tolerances as tol
from tests.tiny_decode import PROMPTS, TINY_DECODE, load_chat_pair

BASE = TINY_DECODE


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


def _decode(models, cfg, prompts=PROMPTS, **kw):
    lm, rm = models
    return NablaDecoder(lm, rm, cfg, **kw).generate(list(prompts), jax.random.key(0))


def _budget_adds_up(res, cfg):
    st = res.stats
    parts = st["rollout_calls"] + st["dto_calls"] + st["probe_calls"] + st["score_calls"]
    assert st["model_calls"] == parts
    assert st["rollout_calls"] == st["generated_tokens"]
    assert st["probe_calls"] == 4 * st["probes"]
    assert 1 <= st["generations"] <= cfg.max_n_generations
    proposals = sum(e["proposed"] for e in res.trace)
    assert st["generations"] == 1 + proposals
    assert st["score_calls"] == 2 * proposals
    assert st["rejections"] == sum(e["proposed"] and not e["accepted"] for e in res.trace)
    assert len(res.trace) == st["refinements"] <= st["iterations"]


def test_config_checks_and_program_split():
    for bad in (
        dict(grad_quantile=1.0), dict(grad_top_k=0), dict(dto_lr_gap=0.0),
        dict(positions_per_iteration=0), dict(refine_passes=0),
        dict(resample_excludes_current=1), dict(grad_quantile=0.5, grad_top_k=2),
        dict(accept_margin=-1.0),
    ):  # fmt: skip
        with pytest.raises(ValueError):
            dataclasses.replace(BASE, **bad)
    a = dataclasses.replace(BASE, grad_quantile=0.8, dto_lr_gap=0.5)
    b = dataclasses.replace(BASE, grad_quantile=0.9, dto_lr_gap=2.0)
    assert a.program() == b.program() and a.uses_probe and a.grad_rank == "quantile"
    # float32(0.9) is 0.9 within half an ulp (u relative)
    assert float(b.hyper().grad_quantile) == pytest.approx(0.9, rel=tol.U32)
    assert float(b.hyper().dto_lr_gap) == 2.0
    assert BASE.program() != a.program()  # the options are structure when on
    k = dataclasses.replace(BASE, grad_top_k=3)
    assert k.grad_rank == "top_k" and int(k.hyper().grad_top_k) == 3


def test_rank_threshold_gap_lr_and_exclusion():
    norms = jnp.asarray([[1.0, 5.0, 3.0, 4.0, 9.0], [2.0, 1.0, 0.5, 7.0, 6.0]])
    valid = jnp.asarray([[True, True, True, True, False], [True, True, True, True, True]])
    top2 = dataclasses.replace(BASE, grad_top_k=2)
    got = rank_threshold(norms, valid, top2.hyper(), top2.program())
    # a threshold is one of the norms, selected, not computed: exact
    np.testing.assert_array_equal(np.asarray(got)[:, 0], [4.0, 6.0])  # the masked 9 is ignored
    q = dataclasses.replace(BASE, grad_quantile=0.5)  # top half: ceil(0.5 · count) largest
    got = rank_threshold(norms, valid, q.hyper(), q.program())
    np.testing.assert_array_equal(np.asarray(got)[:, 0], [4.0, 2.0])
    gap = dataclasses.replace(BASE, dto_lr_gap=1.5)
    lr = gap_learning_rate(
        jnp.asarray([[4.0, 1.0, 0.0], [0.0, 2.0, 2.5]]), gap.hyper(), gap.program()
    )
    want = [1.5 * 3 / 3, 1.5 * 0.5 / 3]  # a gap, a ratio and a product: a few rounded ops
    tol.assert_within(np.asarray(lr).reshape(-1), want, tol.elementwise_bound(want, ops=4))
    # Excluding the current token: even a near-certain token is never drawn again.
    ex = dataclasses.replace(BASE, resample_excludes_current=True)
    logits = jnp.tile(jnp.asarray([[30.0, 0.0, 0.0, 0.0]]), (64, 1))
    keys = jax.random.split(jax.random.key(1), 64)
    toks = resample_tokens(keys, logits, jnp.zeros(64, jnp.int32), ex.hyper(), ex.program())
    assert 0 not in set(np.asarray(toks).tolist())


def test_exploration_options_decode_and_their_budget_adds_up(models):
    """(a) top-1 gradient rank, (b) gap-sized DTO steps, (c) no current token, (e) passes: one
    decode (one compiled program) covers them all."""
    cfg = dataclasses.replace(
        BASE, confidence_threshold=None, grad_top_k=1, dto_lr_gap=1.0,
        resample_excludes_current=True, max_n_generations=6, refine_passes=3,
    )  # fmt: skip
    for res in _decode(models, cfg):
        _budget_adds_up(res, cfg)
        assert res.stats["probes"] >= res.stats["refinements"] > 0
        assert res.trace and all(e["proposed"] for e in res.trace)  # (c): every position proposes
        assert len(res.trace) == res.stats["generations"] - 1
        # (e): a row ends early only when its last pass found no candidate or it stopped
        if res.stats["generations"] < cfg.max_n_generations:
            assert res.stats["refinement_end"] in ("converged", "stopped")


def test_several_positions_per_iteration_commit_several(models):
    cfg = dataclasses.replace(
        BASE, confidence_threshold=1.0, positions_per_iteration=3, max_n_generations=20,
        accept_margin=2.5,
    )  # fmt: skip
    # A scorer by length: a proposal passes the margin iff its RM input is 3+ tokens longer.
    for res in _decode(models, cfg, scorer=lambda seqs: [float(len(s)) for s in seqs]):
        _budget_adds_up(res, cfg)
        for e in res.trace:
            if e["proposed"]:
                assert e["accepted"] == (e["score_proposed"] > e["score_current"] + 2.5)
        pos = [e["position"] for e in res.trace]
        # Every position is a candidate, so each iteration commits three of them.
        assert pos[0] == 0 and all(b - a == 3 for a, b in zip(pos, pos[1:])), pos
        assert len(pos) == res.stats["iterations"] >= len(res.token_ids) / 3


def test_oracle_score_on_crafted_lines():
    q = "Compute (12+7)*3-5"
    assert reference_steps(q) == [(12, "+", 7, 19), (19, "*", 3, 57), (57, "-", 5, 52)]
    right = "12+7=19\n19*3=57\n57-5=52\nAnswer: 52"
    assert oracle_score(q, right) == 3 + 4
    assert oracle_score(q, "12+7=19\n19*3=56\n56-5=51\nAnswer: 51") == 1  # first error at line 2
    assert oracle_score(q, "12+7=19\n19*3=57\n57-5=52\nAnswer: 53") == 3  # lines right, answer not
    assert oracle_score(q, "12+7=20\n20*3=60\n60-5=55\nAnswer: 52") == 4  # lucky answer only
    assert oracle_score(q, "12 + 7 = 19\n19*3=57\n") == 2  # spacing tolerated
    assert oracle_score(q, "12+8=20\n") == 0  # wrong operand is a wrong step
    for p in generate("validation", 30, 1):
        assert oracle_score(p.question, p.solution) == 2 * p.num_ops + 1
        assert reference_steps(p.question)[-1][3] == p.answer
    with pytest.raises(ValueError):
        reference_steps("Compute 2^3")


def test_oracle_scorer_maps_rm_inputs_back_to_problems(models):
    lm, rm = models
    task = get_task()
    problems = generate("test", 3, 0)
    scorer = OracleScorer(task, problems, lm, rm)
    seqs, want = [], []
    for p in problems[::-1]:
        prefix, suffix = rm_prefix_suffix_ids(lm.tokenizer, p.question)
        for text in (p.solution, "1+1=2"):
            seqs.append(prefix + lm.tokenizer.encode(text, add_special_tokens=False) + suffix)
            want.append(oracle_score(p.question, text))
    np.testing.assert_array_equal(scorer(seqs), want)
    with pytest.raises(KeyError):
        scorer([[1, 2, 3]])
    with pytest.raises(ValueError, match="no oracle"):
        OracleScorer(get_task("math"), problems, lm, rm)


def test_one_registry_for_baselines_and_variants(models):
    lm, rm = models
    assert parse_methods("greedy,bon:2,nabla-nodto,nabla") == [
        "greedy", "bon:2", "nabla-nodto", "nabla",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="known methods"):
        parse_methods("nabla-bogus")
    with pytest.raises(ValueError, match="not a baseline"):
        run_baseline("nabla", lm, PROMPTS)
    ones = method_runner("bon:2", lm, rm, BASE, scorer=lambda seqs: [1.0] * len(seqs))
    assert len(ones(PROMPTS[:2], jax.random.key(0))) == 2


def test_bootstrap_and_paired_comparison():
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    x = [True] * 60 + [False] * 40
    lo, hi = bootstrap_ci(x)
    assert lo < 0.6 < hi and bootstrap_ci(x) == (lo, hi)  # deterministic
    lo4, hi4 = bootstrap_ci(x * 4)
    assert hi4 - lo4 < hi - lo  # narrower with more problems
    assert 0.16 < hi - lo < 0.22  # about 2 · 1.96 · sqrt(0.24 / 100)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    base = {"a": True, "b": False, "c": True, "d": False, "e": True}
    other = {"a": True, "b": True, "c": False, "d": False, "x": True}
    assert paired_comparison(base, other) == dict(
        fixed=1, broken=1, unchanged_correct=1, unchanged_wrong=1, n=4
    )


def test_paired_difference_interval():
    base = {i: i % 2 == 0 for i in range(100)}
    assert paired_difference_ci(base, base) == (0.0, 0.0)  # identical arms: no difference
    wrong, right = dict.fromkeys(range(100), False), dict.fromkeys(range(100), True)
    assert paired_difference_ci(wrong, right) == (1.0, 1.0)  # every problem fixed, every draw
    some = {i: v or i < 20 for i, v in base.items()}  # 10 fixed of 100
    lo, hi = paired_difference_ci(base, some)
    assert 0 < lo < 0.1 < hi and paired_difference_ci(base, some) == (lo, hi)
    with pytest.raises(ValueError, match="at least one problem"):
        paired_difference_ci(base, {"x": True})


def test_the_bundled_config_holds_the_chosen_exploration():
    from nabla_jax.app.bundled import bundled_decode_config

    cfg = bundled_decode_config()
    assert cfg.resample_excludes_current is True and cfg.accept_margin == 4.0


@pytest.mark.parity
def test_row_scaled_optimizer_gives_each_row_its_learning_rate():
    from nabla_jax.decoding.steps.refine import row_scaled_optimizer
    from nabla_jax.functional.optimizer import paper_optimizer

    cfg = dataclasses.replace(BASE, dto_lr_gap=1.0)
    h, prog = cfg.hyper(), cfg.program()
    lrs = jnp.asarray([0.1, 0.3], jnp.float32)
    grads = jax.random.normal(jax.random.key(3), (2, 3, 5))
    params = jax.random.normal(jax.random.key(4), (2, 3, 5))
    tx = row_scaled_optimizer(prog, h, lrs)
    state = tx.init(params)
    for _ in range(3):
        both, state = tx.update(grads, state, params)
    for r in range(2):
        one = paper_optimizer(prog.dto, h.dto._replace(learning_rate=lrs[r]))
        s1 = one.init(params[r : r + 1])
        for _ in range(3):
            want, s1 = one.update(grads[r : r + 1], s1, params[r : r + 1])
        # 3 Adam updates, elementwise (~10 rounded operations each: moments, bias corrections,
        # √, + eps, ÷, × lr) with the learning rate applied per row instead of once
        bound = tol.elementwise_bound(want[0], ops=30)
        tol.assert_within(both[r], want[0], bound, f"row {r} updates")
