"""The functional core: pure refinement under jit, vmap and donation; custom rewards, optimizers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import nabla_jax as nj
import nabla_jax.functional as F
from nabla_jax.runtime import profiling
from tests import tolerances as tol
from tests.hf_models import VOCAB, hf_config, saved_qwen2_pair
from tests.reference import torch_dto as td

FLOAT_FIELDS = tol.TRACE_FLOATS


def _refine_bounds(lm, rm, cfg, problems, key, batch_size=2):
    """tests/tolerances.py's refine_bounds (batch_size 2: the batching these tests compare)."""
    return tol.refine_bounds(lm, rm, cfg, problems, key, batch_size)


@pytest.fixture(scope="module")
def models():
    lm = nj.init_causal_lm(hf_config("qwen2"), jax.random.key(1))
    rm = nj.init_reward_model(hf_config("qwen2"), jax.random.key(2))
    return lm, rm


def _problem(seed, p=9, q=6, s=3, k=5, scale=2.0):
    rng = np.random.RandomState(seed)
    return nj.RefineProblem(
        lm_prefix_ids=rng.randint(3, VOCAB, p).tolist(),
        rm_prefix_ids=rng.randint(3, VOCAB, q).tolist(),
        rm_suffix_ids=rng.randint(3, VOCAB, s).tolist(),
        init=(rng.randn(k, VOCAB) * scale).astype(np.float32),
    )


PROBLEMS = [_problem(0), _problem(1, p=14, q=4, k=3), _problem(2, p=5, q=7, s=2, k=6)]


@pytest.mark.parity
@pytest.mark.parametrize("caching", [True, False])
def test_jit_vmap_refine_one_equals_refine_batch(models, caching):
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=8, learning_rate=0.5, update_postfix=True, grad_caching=caching)
    key = jax.random.key(3)
    want = nj.refine_batch(lm, rm, PROBLEMS, cfg, key, batch_size=2)
    refine_one = F.make_refine(lm, rm, cfg)
    packed = F.pack(lm, PROBLEMS, cfg)
    keys = jnp.stack([key] * len(PROBLEMS))
    logits, trace = jax.jit(jax.vmap(refine_one))(packed, keys)
    # The two programs batch the prompts differently (3 rows against 2 + 2), so XLA orders
    # their reductions differently, and Adam amplifies that rounding on near-zero gradient
    # entries: the bound is this refinement's own sensitivity inside float32's backward-error
    # ball (tests/tolerances.py), measured with refine_batch itself.
    rel = tol.gamma(tol.longest_contraction(lm, rm, extra=packed.lm_prefix_ids.shape[1]))

    def run(ms):
        res = nj.refine_batch(ms[0], ms[1], PROBLEMS, cfg, key, batch_size=2)
        return tuple(r.logits for r in res) + tuple(r.trace.loss for r in res)

    n = len(PROBLEMS)
    floors = (VOCAB,) * n + tuple(VOCAB * w.logits.shape[0] for w in want)
    bounds = tol.ball_tolerance(run, (lm, rm), rel, floors)
    for i, w in enumerate(want):
        k = w.logits.shape[0]
        tol.assert_within(logits[i, :k], w.logits, bounds[i], f"row {i} logits")
        tol.assert_within(trace.loss[i], w.trace.loss, bounds[n + i], f"row {i} losses")
        np.testing.assert_array_equal(jnp.argmax(logits[i, :k], -1), w.tokens)
        # caching decides the same full steps under vmap (cond became select; same results)
        np.testing.assert_array_equal(trace.full_step[i], w.trace.full_step)
    if caching:
        assert not np.all(np.asarray(trace.full_step)), "some steps reuse the cached gradient"


def test_jit_vmap_refine_one_is_the_batched_program(models):
    """Under the vmap rule, vmap(refine_one) on a pack runs refine_rows on that pack: the same
    program on the same inputs, so the same bits (no tolerance)."""
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=8, learning_rate=0.5, update_postfix=True)
    packed = F.pack(lm, PROBLEMS, cfg)
    keys = jnp.stack([jax.random.key(3)] * len(PROBLEMS))
    logits, trace = jax.jit(jax.vmap(F.make_refine(lm, rm, cfg)))(packed, keys)
    table = F.rm_embedding_table(lm, rm, None)
    rows = jax.jit(lambda p, k: F.refine_rows(lm, rm, table, p, k, cfg.hyper(), cfg, None, None))
    want_logits, _, want_trace = rows(packed, keys)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(want_logits))
    np.testing.assert_array_equal(np.asarray(trace.loss), np.asarray(want_trace.loss).T)


def test_vmap_rule_runs_the_batched_program_and_keeps_the_skip(models):
    """vmap over prompts runs refine_rows (one real cond per step); generic batching has none."""
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=3, learning_rate=0.5, update_postfix=True)
    packed = F.pack(lm, PROBLEMS, cfg)
    keys = jnp.stack([jax.random.key(0)] * 3)
    out = {}
    for rule in (True, False):
        fn = jax.vmap(F.make_refine(lm, rm, cfg, vmap_rule=rule))
        out[rule] = jax.jit(fn)(packed, keys)
        conds = str(jax.make_jaxpr(fn)(packed, keys)).count("cond[")
        assert conds == (1 if rule else 0), (rule, conds)
    # the same refinement, batched two ways: within its own ball (measured with refine_batch,
    # which runs the vmap-rule program on these three rows)
    bounds = _refine_bounds(lm, rm, cfg, PROBLEMS, jax.random.key(0))
    (la, ta), (lb, tb) = out[True], out[False]
    for i, p in enumerate(PROBLEMS):
        k = p.init.shape[0]
        tol.assert_within(la[i, :k], lb[i, :k], bounds["logits"][i], f"row {i} logits")
        for f in FLOAT_FIELDS:
            tol.assert_within(getattr(ta, f)[i], getattr(tb, f)[i], bounds[f][i], f"row {i} {f}")
    # the schedule and the step flags do not pass through the models: exact
    for f in ta._fields:
        if f not in FLOAT_FIELDS:
            np.testing.assert_array_equal(getattr(ta, f), getattr(tb, f), err_msg=f)


def test_grad_through_the_refinement_matches_finite_differences(models):
    """d(final log-prob of a token)/d(learning rate), through 3 DTO steps (jvp of the program)."""
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=3, update_postfix=True, schedule="constant")
    refine_one = F.make_refine(lm, rm, cfg)
    row = jax.tree.map(lambda a: a[0], F.pack(lm, PROBLEMS[:1], cfg))

    @jax.jit
    def objective(lr):
        logits, _ = refine_one(row, jax.random.key(0), cfg.hyper()._replace(learning_rate=lr))
        return jnp.sum(jax.nn.log_softmax(logits[:5])[:, 7])

    lr, eps = jnp.float32(0.1), 1e-2
    fd = (objective(lr + eps) - objective(lr - eps)) / (2 * eps)
    grad = jax.grad(objective)(lr)
    assert np.isfinite(grad) and abs(float(grad)) > 1e-3  # not vacuous: the lr matters here
    # Not a float32-rounding comparison: a central difference at eps carries the truncation
    # error eps²·|f‴|/6 (eps² = 1e-4 relative, times the objective's curvature ratio through 3
    # Adam steps) and the objective's rounding amplified by 1/eps; 2e-2 is the accuracy of
    # finite differences at this eps, while a wrong derivative (a sign, a dropped step through
    # the scan) is off by O(1).
    np.testing.assert_allclose(grad, fd, rtol=2e-2)


def test_refine_one_makes_no_host_transfer_and_compiles_once(models):
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=4)
    refine_one = jax.jit(jax.vmap(F.make_refine(lm, rm, cfg)))
    packed = F.pack(lm, PROBLEMS, cfg)
    keys = jax.random.split(jax.random.key(0), 3)
    refine_one(packed, keys)  # compile
    with profiling.track() as t:
        for seed in range(3):
            out = refine_one(packed, jax.random.split(jax.random.key(seed), 3))
        jax.block_until_ready(out)
    assert t.compiles == 0 and t.transfers == 0


def test_custom_callable_reward_moves_logits_along_its_gradient(models):
    lm, _ = models
    rng = np.random.RandomState(0)
    table = jnp.asarray(rng.randn(VOCAB, 8), jnp.float32)
    w = jnp.asarray(rng.randn(8), jnp.float32)

    def reward(embeds, mask):  # [B, T, D], [B, T] -> [B]: mean-pooled linear score
        m = mask[..., None].astype(embeds.dtype)
        return jnp.sum(embeds * m, axis=1) @ w / jnp.maximum(jnp.sum(m, axis=1)[:, 0], 1.0)

    cfg = nj.DTOConfig(num_steps=20, learning_rate=1.0, nll_coeff=0.0, schedule="constant")
    refine_one = F.make_refine(lm, reward, cfg, reward_table=table)
    packed = F.pack(lm, [_problem(5, scale=0.5)], cfg)
    row = jax.tree.map(lambda a: a[0], packed)
    logits, trace = jax.jit(refine_one)(row, jax.random.key(0))
    best = int(jnp.argmax(table @ w))  # the token the reward's gradient favours
    assert int(jnp.argmax(logits[0])) == best
    delta = np.asarray(logits[0] - row.init[0])
    assert int(np.argmax(delta)) == best, "the favoured token's logit moves the most"
    np.testing.assert_array_equal(logits[1:5], row.init[1:5])  # only position 0 is updated
    assert float(trace.reward[-1]) > float(trace.reward[0])


def test_embedding_lm_equals_the_causal_lm(models):
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=6, learning_rate=0.3, update_postfix=True, grad_caching=False)
    as_fn = F.EmbeddingLM(
        lambda e, m: lm.logits(inputs_embeds=e, attention_mask=m), lm.embed_matrix()
    )
    packed = F.pack(lm, PROBLEMS[:2], cfg)
    keys = jnp.stack([jax.random.key(0)] * 2)
    want, _ = jax.vmap(F.make_refine(lm, rm, cfg))(packed, keys)
    got, _ = jax.vmap(F.make_refine(as_fn, rm, cfg))(packed, keys)
    # the same refinement through a wrapped forward: within its own ball
    bounds = _refine_bounds(lm, rm, cfg, PROBLEMS[:2], jax.random.key(0))
    for i, p in enumerate(PROBLEMS[:2]):
        k = p.init.shape[0]
        tol.assert_within(got[i, :k], want[i, :k], bounds["logits"][i], f"row {i} logits")


@pytest.fixture(scope="module")
def torch_pair(tmp_path_factory):
    return saved_qwen2_pair(tmp_path_factory.mktemp("pair"))


@pytest.mark.parity
def test_custom_optax_chain_matches_torch_twin(torch_pair):
    """clip_by_global_norm(1) then AdamW(0.05) = torch clip_grad_norm_ then AdamW, 20 steps."""
    lm_t, rm_t, lm, rm = torch_pair
    prob = _problem(7, scale=0.5)
    cfg = nj.DTOConfig(num_steps=20, update_postfix=True)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.05))
    refine_one = F.make_refine(lm, rm, cfg, tx)
    row = jax.tree.map(lambda a: a[0], F.pack(lm, [prob], cfg))
    logits, trace = jax.jit(refine_one)(row, jax.random.key(0))
    ref = td.paper_dto(
        lm_t, rm_t, list(prob.lm_prefix_ids), list(prob.rm_prefix_ids),
        list(prob.rm_suffix_ids), torch.tensor(np.asarray(prob.init)),
        num_steps=20, learning_rate=0.05, optimizer="adamw", weight_decay=1e-4,
        schedule="constant", update_postfix=True, clip_grad_norm=1.0,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(trace.full_step), ref["full_steps"])
    # 20 clipped AdamW steps against torch: the refinement's own ball around the weights
    # (the same program with the models as arguments, re-run at points of the ball)
    prog = jax.jit(lambda ms, r, k: F.make_refine(ms[0], ms[1], cfg, tx)(r, k))
    extra = len(prob.lm_prefix_ids) + len(prob.rm_prefix_ids) + len(prob.rm_suffix_ids) + 5
    rel = tol.gamma(tol.longest_contraction(lm, rm, extra=extra))

    def run(ms):
        out, tr = prog(ms, row, jax.random.key(0))
        return out[:5], tr.loss

    b_logits, b_loss = tol.ball_tolerance(run, (lm, rm), rel, (VOCAB, 5 * VOCAB))
    tol.assert_within(trace.loss, ref["losses"], b_loss, "losses")
    tol.assert_within(logits[:5], ref["logits"].numpy(), b_logits, "logits")
    assert np.all(np.isnan(np.asarray(trace.lr))), "a plain optax.adamw exposes no learning rate"


def test_vmap_over_learning_rates_is_one_program(models):
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=8, update_postfix=True)
    refine_one = F.make_refine(lm, rm, cfg)
    row = jax.tree.map(lambda a: a[0], F.pack(lm, PROBLEMS[:1], cfg))
    lrs = jnp.asarray([0.01, 0.05, 0.2], jnp.float32)
    hypers = cfg.hyper()._replace(learning_rate=lrs)
    axes = type(hypers)(*[0 if f == "learning_rate" else None for f in hypers._fields])
    sweep = jax.jit(jax.vmap(refine_one, in_axes=(None, None, axes)))
    logits, trace = sweep(row, jax.random.key(0), hypers)
    assert sweep._cache_size() == 1
    for i, lr in enumerate([0.01, 0.05, 0.2]):
        one_cfg = nj.DTOConfig(num_steps=8, update_postfix=True, learning_rate=lr)
        alone = nj.refine(lm, rm, PROBLEMS[0], one_cfg, jax.random.key(0))
        bound = _refine_bounds(lm, rm, one_cfg, PROBLEMS[:1], jax.random.key(0))["logits"][0]
        tol.assert_within(logits[i, :5], alone.logits, bound, f"lr {lr}")
        # the schedule: lr × a warmup/decay factor, a few correctly rounded operations each
        lr_bound = tol.elementwise_bound(alone.trace.lr, ops=4)
        tol.assert_within(trace.lr[i], alone.trace.lr, lr_bound, "lr")
    sweep(row, jax.random.key(0), hypers._replace(learning_rate=lrs * 2))
    assert sweep._cache_size() == 1, "new learning rates reuse the program"


def test_inside_a_user_jit_with_donated_buffers(models):
    lm, rm = models
    cfg = nj.DTOConfig(num_steps=4, learning_rate=0.2, update_postfix=True)
    refine_one = F.make_refine(lm, rm, cfg)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def user_step(packed, keys, temperature):
        logits, trace = jax.vmap(refine_one)(packed, keys)
        probs = jax.nn.softmax(logits / temperature, axis=-1)  # the user's own code after DTO
        return packed._replace(init=logits), jnp.mean(trace.loss, axis=-1), probs

    keys = jnp.stack([jax.random.key(0)] * 3)
    expect_logits, _ = jax.vmap(refine_one)(F.pack(lm, PROBLEMS, cfg), keys)
    packed = F.pack(lm, PROBLEMS, cfg)
    new_packed, loss, probs = user_step(packed, keys, 2.0)
    bounds = _refine_bounds(lm, rm, cfg, PROBLEMS, jax.random.key(0))
    for i, p in enumerate(PROBLEMS):
        k = p.init.shape[0]
        tol.assert_within(new_packed.init[i, :k], expect_logits[i, :k], bounds["logits"][i])
    # a softmax sums to 1 within each entry's relative error plus the V-term sum's γ_V
    x = np.asarray(new_packed.init, np.float64) / 2.0
    tol.assert_within(probs.sum(-1), 1.0, tol.softmax_rel(x) + tol.gamma(VOCAB), "Σ probs")
    assert packed.init.is_deleted(), "the donated input buffer was reused"
    again, _, _ = user_step(new_packed, keys, 2.0)  # chaining refinements, still donated
    assert again.init.shape == packed.init.shape


def test_pack_fixed_sizes_and_errors(models):
    lm, rm = models
    sizes = F.PackSizes(lm_prefix=32, rm_prefix=16, rm_suffix=8, window=8)
    packed = F.pack(lm, PROBLEMS, sizes=sizes)
    assert packed.lm_prefix_ids.shape == (3, 32) and packed.init.shape == (3, 8, VOCAB)
    with pytest.raises(ValueError, match="lm_prefix has 9 tokens, more than PackSizes.lm_prefix=8"):
        F.pack(lm, PROBLEMS, sizes=F.PackSizes(lm_prefix=8, rm_prefix=16, rm_suffix=8, window=8))
    with pytest.raises(ValueError, match="at least one RefineProblem"):
        F.pack(lm, [])
    with pytest.raises(ValueError, match="PackSizes.window"):
        F.PackSizes(lm_prefix=8, rm_prefix=0, rm_suffix=0, window=0)


def test_make_refine_errors(models):
    lm, rm = models
    fn = lambda e, m: jnp.sum(e, axis=(1, 2))  # noqa: E731
    with pytest.raises(ValueError, match="needs the embedding table"):
        F.make_refine(lm, fn, nj.DTOConfig())
    with pytest.raises(ValueError, match="table has 7 rows"):
        F.make_refine(lm, fn, nj.DTOConfig(), reward_table=jnp.zeros((7, 4)))
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        F.make_refine(lm, rm, nj.DTOConfig(), optimizer="adam")
    with pytest.raises(ValueError, match="no output head"):
        F.make_refine(F.EmbeddingLM(fn, lm.embed_matrix()), rm, nj.DTOConfig(mode="latents"))
    with pytest.raises(TypeError, match="reward must be"):
        F.make_refine(lm, 3, nj.DTOConfig())
    with pytest.raises(ValueError, match="reward_form='score'"):
        F.make_refine(lm, rm, nj.DTOConfig(reward_form="mean_last_logits"))
    refine_one = F.make_refine(lm, rm, nj.DTOConfig(num_steps=1))
    with pytest.raises(AssertionError, match="one row of a pack"):
        refine_one(F.pack(lm, PROBLEMS[:1]), jax.random.key(0))  # the pack itself, not a row


def test_nonfinite_halts_the_row_inside_a_trace(models):
    lm, _ = models
    bad = lambda e, m: jnp.sum(e, axis=(1, 2)) * jnp.inf  # noqa: E731
    table = jnp.ones((VOCAB, 4))
    cfg = nj.DTOConfig(num_steps=3, nll_coeff=0.0)  # on_nonfinite="raise": no host to raise
    refine_one = F.make_refine(lm, bad, cfg, reward_table=table)
    row = jax.tree.map(lambda a: a[0], F.pack(lm, PROBLEMS[:1], cfg))
    logits, trace = jax.jit(refine_one)(row, jax.random.key(0))
    assert np.all(np.asarray(trace.nonfinite))
    np.testing.assert_array_equal(logits, row.init)
