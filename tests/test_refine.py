"""JAX DTO (refine, refine_batch, optimize_reasoning_sequence) held to the PyTorch twins."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import nabla_jax as nj
from nabla_jax.functional.dto_config import DTOConfig
from nabla_jax.functional.refine import RefineProblem, compiled_programs, refine, refine_batch
from tests import tolerances as tol
from tests.hf_models import VOCAB, saved_qwen2_pair
from tests.reference import torch_dto as td

STEPS = 20


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny random Qwen2 LM and reward model, as HF torch models and as nabla-jax models."""
    return saved_qwen2_pair(tmp_path_factory.mktemp("pair"))


def _problem(seed, p=9, q=6, s=3, k=5, width=VOCAB, scale=0.5):
    rng = np.random.RandomState(seed)
    return RefineProblem(
        lm_prefix_ids=rng.randint(3, VOCAB, p).tolist(),
        rm_prefix_ids=rng.randint(3, VOCAB, q).tolist(),
        rm_suffix_ids=rng.randint(3, VOCAB, s).tolist(),
        init=(rng.randn(k, width) * scale).astype(np.float32),
    )


def _torch_run(lm_t, rm_t, prob, cfg, **kw):
    return td.paper_dto(
        lm_t,
        rm_t,
        list(prob.lm_prefix_ids),
        list(prob.rm_prefix_ids),
        list(prob.rm_suffix_ids),
        torch.tensor(np.asarray(prob.init)),
        mode=cfg.mode,
        num_steps=cfg.num_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        schedule=cfg.schedule,
        warmup_steps=cfg.num_warmup,
        min_lr_ratio=cfg.min_lr_ratio,
        reward_coeff=cfg.reward_coeff,
        nll_coeff=cfg.nll_coeff,
        tau=cfg.tau,
        update_postfix=cfg.update_postfix,
        grad_caching=cfg.grad_caching,
        **kw,
    )


def _lr_bound(lrs):
    """The schedule in float32 against the twin's Python floats: lr × a warmup/decay factor,
    about four correctly rounded operations per step (``elementwise_bound``)."""
    return tol.elementwise_bound(lrs, ops=4)


CASES = [
    dict(mode="logits", grad_caching=True, update_postfix=False),
    dict(mode="logits", grad_caching=False, update_postfix=False),
    dict(mode="logits", grad_caching=True, update_postfix=True),
    dict(mode="logits", grad_caching=False, update_postfix=True, weight_decay=0.01),
    dict(mode="latents", grad_caching=True, update_postfix=False),
    dict(mode="latents", grad_caching=False, update_postfix=True),
    dict(mode="logits", grad_caching=True, update_postfix=True, optimizer="adamw",
         weight_decay=0.1, schedule="linear", warmup_steps=3),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_paper_dto_matches_torch_twin(pair, case):
    """Per-step loss trace and logits within the refinement's derived bound over 20 steps
    (tests/tolerances.py: refine_bounds), identical tokens, lrs within their rounding."""
    lm_t, rm_t, lm, rm = pair
    # A large step so tokens actually change and the gradient cache is invalidated.
    cfg = DTOConfig(num_steps=STEPS, learning_rate=0.3, **case)
    width = lm.config.vocab_size if cfg.mode == "logits" else lm.config.hidden_size
    prob = _problem(3, width=width, scale=0.5 if cfg.mode == "logits" else 1.0)
    ref = _torch_run(lm_t, rm_t, prob, cfg)
    out = refine(lm, rm, prob, cfg, jax.random.key(0))
    bounds = tol.refine_bounds(lm, rm, cfg, [prob], jax.random.key(0))
    tol.assert_within(out.trace.loss, ref["losses"], bounds["loss"][0], "losses")
    tol.assert_within(out.trace.lr, ref["lrs"], _lr_bound(ref["lrs"]), "lrs")
    np.testing.assert_array_equal(out.trace.full_step, ref["full_steps"])
    np.testing.assert_array_equal(np.asarray(out.tokens), ref["tokens"].numpy())
    tol.assert_within(out.logits, ref["logits"].numpy(), bounds["logits"][0], "logits")
    assert out.model_calls == ref["model_calls"]
    assert sum(ref["n_changed"]) > 0, "the case should exercise token changes"


def test_bfloat16_window_matches_torch_twin_and_freezes_large_logits(pair):
    """window_dtype="bfloat16" (the public code's ahead logits): the same tokens and learning
    rates as the twin's bfloat16 parameter, logits within two bfloat16 spacings; and the effect
    the option exists for — a logit of magnitude ≥ 4 does not move under lr-0.01 Adam steps in
    bfloat16 (spacing 0.03), while it does in float32."""
    lm_t, rm_t, lm, rm = pair
    prob = _problem(5, scale=3.0)
    cfg = DTOConfig(num_steps=STEPS, learning_rate=0.01, window_dtype="bfloat16")
    ref = _torch_run(lm_t, rm_t, prob, cfg, param_dtype=torch.bfloat16)
    out = refine(lm, rm, prob, cfg, jax.random.key(0))
    assert np.asarray(out.logits).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(out.tokens), ref["tokens"].numpy())
    tol.assert_within(out.trace.lr, ref["lrs"], _lr_bound(ref["lrs"]), "lrs")
    z0 = np.asarray(prob.init)[0]
    big = np.abs(z0) >= 4.0
    assert big.any()
    spacing = 2.0 ** (np.floor(np.log2(np.abs(z0[big]))) - 7)  # bfloat16 ulp at each value
    got, want = np.asarray(out.logits)[0][big], ref["logits"].float().numpy()[0][big]
    assert np.all(np.abs(got - want) <= 2 * spacing)
    start = np.asarray(jnp.asarray(z0[big]).astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(got, start)  # frozen: each step is below half a spacing
    fp32 = refine(lm, rm, prob, dataclasses.replace(cfg, window_dtype="float32"), jax.random.key(0))
    assert np.max(np.abs(np.asarray(fp32.logits)[0][big] - z0[big])) > 0.01


@pytest.mark.parity
def test_article_function_matches_torch_twin(pair):
    """optimize_reasoning_sequence: refined logits and losses within their derived bound (the
    ball around the LM's weights) and the same argmax after 5 steps."""
    lm_t, _, lm, _ = pair
    rng = np.random.RandomState(5)
    init = (rng.randn(7, VOCAB) * 0.3).astype(np.float32)
    ref_logits = (rng.randn(7, VOCAB)).astype(np.float32)
    # The article's reward network is a causal LM (3-D logits; mean of the last position).
    z = nj.optimize_reasoning_sequence(None, init, lm, lm, ref_logits, 0.1, 0.05, 5)
    zt, trace = td.article_optimize(
        torch.tensor(init), lm_t, torch.tensor(ref_logits), 0.1, 0.05, 5
    )

    def run(m):
        out, tr = nj.optimize_reasoning_sequence(
            None, init, m, m, ref_logits, 0.1, 0.05, 5, return_trace=True
        )
        return out, np.asarray(tr["loss"])

    rel = tol.gamma(tol.longest_contraction(lm, extra=7))
    b_z, b_loss = tol.ball_tolerance(run, lm, rel, (VOCAB, 7 * VOCAB))
    tol.assert_within(z, zt.numpy(), b_z, "refined logits")
    np.testing.assert_array_equal(np.asarray(z).argmax(-1), zt.numpy().argmax(-1))
    _, jtrace = nj.optimize_reasoning_sequence(
        None, init, lm, lm, ref_logits, 0.1, 0.05, 5, return_trace=True
    )
    tol.assert_within(jtrace["loss"], [t[0] for t in trace], b_loss, "losses")


@pytest.mark.parity
def test_refine_batch_equals_per_prompt_refine(pair):
    _, _, lm, rm = pair
    cfg = DTOConfig(num_steps=8, learning_rate=0.3)
    # One bucket (P 16, Q/S/K 8): two programs in all, batched and alone.
    probs = [
        _problem(20, p=9, q=4, s=2, k=3),
        _problem(21, p=16, q=8, s=3, k=6),
        _problem(22, p=12, q=1, s=1, k=8),
        _problem(23, p=10, q=6, s=3, k=5),
    ]
    batched = refine_batch(lm, rm, probs, cfg, jax.random.key(1), batch_size=4)
    # 4 rows against 1: other reduction orders, within the batched program's own ball
    bounds = tol.refine_bounds(lm, rm, cfg, probs, jax.random.key(1), batch_size=4)
    for i, (prob, got) in enumerate(zip(probs, batched)):
        alone = refine(lm, rm, prob, cfg, jax.random.key(1))
        tol.assert_within(got.logits, alone.logits, bounds["logits"][i], f"row {i} logits")
        np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(alone.tokens))
        tol.assert_within(got.trace.loss, alone.trace.loss, bounds["loss"][i], f"row {i} loss")
        assert got.full_steps == alone.full_steps


def test_prefix_recomputed_every_step_gives_the_same_numbers(pair):
    """The models as functions of embeddings (no kept keys/values: the prefix runs with the
    window at every full step) give the numbers of the cached path."""
    from nabla_jax import functional as F

    _, _, lm, rm = pair
    prob = _problem(30)
    cfg = DTOConfig(num_steps=6, learning_rate=0.3)
    a = refine(lm, rm, prob, cfg, jax.random.key(0))
    lm_fn = F.EmbeddingLM(lambda e, m: lm.logits(inputs_embeds=e, attention_mask=m),
                          lm.embed_matrix())  # fmt: skip
    rm_fn = F.EmbeddingReward(lambda e, m: rm.score(inputs_embeds=e, attention_mask=m),
                              rm.embed_matrix())  # fmt: skip
    row = jax.tree.map(lambda x: x[0], F.pack(lm, [prob], cfg))
    logits, trace = jax.jit(F.make_refine(lm_fn, rm_fn, cfg))(row, jax.random.key(0))
    bound = tol.refine_bounds(lm, rm, cfg, [prob], jax.random.key(0))["loss"][0]
    tol.assert_within(trace.loss, a.trace.loss, bound, "losses")
    np.testing.assert_array_equal(np.argmax(logits[:5], -1), np.asarray(a.tokens))


def test_gradient_caching_skips_model_calls(pair):
    """With a small lr no token changes: one full step, the rest cached (4 calls in all)."""
    _, _, lm, rm = pair
    prob = _problem(31, scale=5.0)
    out = refine(lm, rm, prob, DTOConfig(num_steps=10, learning_rate=1e-3), jax.random.key(0))
    assert out.full_steps == 1 and out.model_calls == 4 and out.batch_full_steps == 1
    assert list(out.trace.full_step) == [True] + [False] * 9
    off = refine(
        lm, rm, prob, DTOConfig(num_steps=10, learning_rate=1e-3, grad_caching=False),
        jax.random.key(0),
    )  # fmt: skip
    assert off.full_steps == 10 and off.model_calls == 40


def test_mixed_lengths_compile_one_program_per_bucket(pair):
    _, _, lm, rm = pair
    cfg = DTOConfig(num_steps=2, learning_rate=0.1)
    rng = np.random.RandomState(0)
    probs = [
        _problem(100 + i, p=int(rng.randint(9, 31)), q=int(rng.randint(1, 9)),
                 s=int(rng.randint(1, 5)), k=int(rng.randint(1, 9)))
        for i in range(40)
    ]  # fmt: skip
    from nabla_jax.functional.packing import shape_key

    buckets = {shape_key(p) for p in probs}
    before = compiled_programs()
    refine_batch(lm, rm, probs, cfg, jax.random.key(0), batch_size=8)
    assert compiled_programs() - before <= len(buckets)
    assert len(buckets) < 40


def test_nonfinite_loss_raises_naming_the_step(pair):
    _, _, lm, rm = pair
    prob = _problem(40)
    nan = np.full_like(np.asarray(prob.init), np.nan)
    # NaN in the caller's start is named as the caller's input, before any compute ...
    with pytest.raises(ValueError, match="RefineProblem.init holds .* this is your input"):
        RefineProblem(prob.lm_prefix_ids, prob.rm_prefix_ids, prob.rm_suffix_ids, nan)
    # ... a loss that turns non-finite while refining (here: a reward model whose weights are
    # NaN) is named by its step.
    rm = nj.RewardModel(rm.config, jax.tree.map(lambda w: w * np.nan, rm.params), None, rm.dtype)
    with pytest.raises(FloatingPointError, match="step 0"):
        refine(lm, rm, prob, DTOConfig(num_steps=3), jax.random.key(0))
    before = compiled_programs()
    out = refine(lm, rm, prob, DTOConfig(num_steps=3, on_nonfinite="flag"), jax.random.key(0))
    assert out.trace.nonfinite.all()
    assert compiled_programs() == before, "a host-only setting must not recompile"


def test_article_guards_warn(pair):
    _, _, lm, _ = pair
    init = np.zeros((3, VOCAB), np.float32)
    with pytest.warns(UserWarning, match="straight-through"):
        nj.optimize_reasoning_sequence(None, init, lm, lm, init, num_steps=9)
    # A reference far from the logits: KL far above 2 nats is reported.
    ref = np.zeros((3, VOCAB), np.float32)
    ref[:, 5] = 30.0
    with pytest.warns(UserWarning, match="KL above 2.0 nats"):
        nj.optimize_reasoning_sequence(None, init, lm, lm, ref, num_steps=2)
    with pytest.raises(ValueError, match="init_logits holds .* this is your input"):
        nj.optimize_reasoning_sequence(None, init * np.nan, lm, lm, ref, num_steps=2)
    with pytest.raises(FloatingPointError, match="step 0"):
        nj.optimize_reasoning_sequence(None, init, lm, lm, ref * np.nan, num_steps=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(objective="ppo"), "objective"),
        (dict(mode="tokens"), "mode"),
        (dict(num_steps=0), "num_steps"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(schedule="step"), "schedule"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(tau=0.0), "tau"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio"),
        (dict(warmup_steps=50), "warmup_steps"),
        (dict(kl_direction="forward"), "kl_direction"),
        (dict(weight_decay=float("nan")), "weight_decay"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DTOConfig(**kwargs)


def test_problem_and_model_errors(pair):
    _, _, lm, rm = pair
    with pytest.raises(ValueError, match="lm_prefix_ids is empty"):
        RefineProblem([], [1], [1], np.zeros((2, VOCAB)))
    with pytest.raises(ValueError, match="init must be"):
        RefineProblem([1], [1], [1], np.zeros((VOCAB,)))
    with pytest.raises(ValueError, match="width"):
        refine(lm, rm, _problem(1, width=7), DTOConfig(), jax.random.key(0))
    with pytest.raises(ValueError, match="positions"):
        refine(lm, rm, _problem(1, p=126, k=5), DTOConfig(), jax.random.key(0))
    with pytest.raises(ValueError, match="mean_last_logits"):
        refine(lm, lm, _problem(1), DTOConfig(), jax.random.key(0))


def test_inputs_that_would_silently_change_the_loss_are_refused(pair):
    """A missing reward model, reward ids outside its vocabulary and a config of the wrong type
    are errors before any compute (they used to drop the reward, read a wrong row or wrap)."""
    _, _, lm, rm = pair
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="reward_coeff=1.0"):
        refine(lm, None, _problem(1), DTOConfig(), key)
    alone = refine(lm, None, _problem(1), DTOConfig(reward_coeff=0.0), key)  # the LM term only
    assert np.all(np.asarray(alone.trace.reward) == 0)
    base = _problem(1)
    for bad in ([VOCAB + 100], [-5]):
        prob = dataclasses.replace(base, rm_suffix_ids=bad)
        with pytest.raises(ValueError, match="outside the reward model's vocabulary"):
            refine(lm, rm, prob, DTOConfig(), key)
        with pytest.raises(ValueError, match="rm_prefix_ids holds id"):
            refine(lm, rm, dataclasses.replace(base, rm_prefix_ids=bad), DTOConfig(), key)
    with pytest.raises(TypeError, match="DTOConfig"):
        refine(lm, rm, base, {"learning_rate": 0.1}, key)
