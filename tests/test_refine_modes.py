"""Every DTO option through the public API (``nj.refine``, ``nj.refine_batch``, ``DTOConfig``),
held to the PyTorch twins in tests/reference/torch_dto.py.

The article objective (with its two warnings); ``tau``, ``hard``, ``kl_direction``, ``lambda_kl``,
warmup, Adam's ``b1``/``b2``/``eps``; ``rm_embed`` over two tokenizers; Gumbel noise keyed by the
call; bfloat16 against float32. Tiny sharpened Qwen2 models, 4–6 steps per run.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
import torch
import transformers as tr

import nabla_jax as nj
from tests import tolerances as tol
from tests.hf_models import VOCAB, hf_config, hf_model, sharpen_
from tests.reference import torch_dto as td
from tests.tokenizer_utils import make_chatml_tokenizer

OTHER_TEXTS = (
    "Colorless green ideas sleep furiously.",
    "Integrals: the integral of x dx is x^2 / 2 + C.",
    "Mixed-case WORDS and numbers 998877.",
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("modes")
    lm_t, rm_t = hf_model("qwen2", "lm", seed=21), hf_model("qwen2", "score", seed=22)
    lm_t.save_pretrained(d / "lm")
    rm_t.save_pretrained(d / "rm")
    return lm_t, rm_t, nj.load_causal_lm(d / "lm"), nj.load_reward_model(d / "rm"), d


def _problem(seed, p=7, q=4, s=2, k=4, v=VOCAB, scale=0.5, rm_v=None, ref=None):
    rng = np.random.RandomState(seed)
    rm_v = rm_v or v
    return nj.RefineProblem(
        lm_prefix_ids=rng.randint(3, v, p).tolist(),
        rm_prefix_ids=rng.randint(3, rm_v, q).tolist(),
        rm_suffix_ids=rng.randint(3, rm_v, s).tolist(),
        init=(rng.randn(k, v) * scale).astype(np.float32),
        ref_logits=ref,
    )


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-8))  # 1e-8: no 0 / 0


def _bounds(lm, rm, prob, cfg, key, **kw):
    """The refinement's derived bounds (tests/tolerances.py: refine_bounds) for one problem."""
    return {f: b[0] for f, b in tol.refine_bounds(lm, rm, cfg, [prob], key, **kw).items()}


def _paper_twin(lm_t, rm_t, prob, cfg, rm_embed=None):
    return td.paper_dto(
        lm_t, rm_t, list(prob.lm_prefix_ids), list(prob.rm_prefix_ids),
        list(prob.rm_suffix_ids), torch.tensor(np.asarray(prob.init)),
        num_steps=cfg.num_steps, learning_rate=cfg.learning_rate, schedule=cfg.schedule,
        warmup_steps=cfg.num_warmup, min_lr_ratio=cfg.min_lr_ratio, nll_coeff=cfg.nll_coeff,
        reward_coeff=cfg.reward_coeff, tau=cfg.tau, hard=cfg.hard, betas=(cfg.b1, cfg.b2),
        eps=cfg.eps, update_postfix=cfg.update_postfix, grad_caching=cfg.grad_caching,
        rm_embed=rm_embed,
    )  # fmt: skip


def _assert_paper_parity(out, ref, bounds):
    """Against the twin: losses and logits within the refinement's derived ``bounds``; the
    schedule (lr × a warmup/decay factor, ~4 rounded operations, against Python floats) within
    its own rounding; step flags and tokens exact."""
    tol.assert_within(out.trace.loss, ref["losses"], bounds["loss"], "losses")
    tol.assert_within(out.trace.lr, ref["lrs"], tol.elementwise_bound(ref["lrs"], ops=4), "lrs")
    np.testing.assert_array_equal(out.trace.full_step, ref["full_steps"])
    np.testing.assert_array_equal(np.asarray(out.tokens), ref["tokens"].numpy())
    tol.assert_within(out.logits, ref["logits"].numpy(), bounds["logits"], "logits")


# -- the paper objective's options ----------------------------------------------------------------

PAPER_CASES = {
    "tau": dict(tau=0.5),
    "soft": dict(hard=False, tau=0.7),
    "warmup-ratio": dict(warmup_ratio=0.34, schedule="linear"),
    "adam-b1-b2-eps": dict(b1=0.5, b2=0.9, eps=1e-3),
}


@pytest.mark.parametrize("name", list(PAPER_CASES))
def test_paper_option_matches_twin(pair, name):
    """Each option changes the run (vs the defaults) and the JAX run follows the twin."""
    lm_t, rm_t, lm, rm, _ = pair
    base = dict(num_steps=6, learning_rate=0.3, update_postfix=True, grad_caching=False)
    cfg = nj.DTOConfig(**base, **PAPER_CASES[name])
    prob = _problem(3)
    out = nj.refine(lm, rm, prob, cfg, jax.random.key(0))
    bounds = _bounds(lm, rm, prob, cfg, jax.random.key(0))
    _assert_paper_parity(out, _paper_twin(lm_t, rm_t, prob, cfg), bounds)
    default = _paper_twin(lm_t, rm_t, prob, nj.DTOConfig(**base))
    # a real difference, not rounding: 1% of the logits' scale and far above the bound
    assert _rel(out.logits, default["logits"].numpy()) > 1e-2, "the option must matter here"
    assert np.abs(np.asarray(out.logits) - default["logits"].numpy()).max() > 100 * bounds["logits"]


def test_warmup_ratio_sets_the_warmup_steps(pair):
    _, _, lm, rm, _ = pair
    cfg = nj.DTOConfig(num_steps=6, learning_rate=0.2, warmup_ratio=0.34, schedule="constant")
    assert cfg.num_warmup == 2
    out = nj.refine(lm, rm, _problem(4), cfg, jax.random.key(0))
    want = [0.0, 0.1, 0.2, 0.2, 0.2, 0.2]  # decimal: float32's own rounding of each, and then some
    tol.assert_within(out.trace.lr, want, tol.elementwise_bound(want, ops=4), "lrs")


# -- the article objective --------------------------------------------------------------------


def _article_problem(seed, k=5, scale=0.3):
    """The article's setting: the RM sees the window alone (no prefix or suffix)."""
    rng = np.random.RandomState(seed)
    init = (rng.randn(k, VOCAB) * scale).astype(np.float32)
    ref = rng.randn(k, VOCAB).astype(np.float32)
    return nj.RefineProblem([5], [], [], init, ref_logits=ref)


@pytest.mark.parametrize(
    "kl_direction, lambda_kl", [("ref_theta", 0.1), ("theta_ref", 0.1), ("ref_theta", 2.0)]
)
def test_article_objective_matches_twin(pair, kl_direction, lambda_kl):
    """refine(objective="article") = the article's loop: -reward + λ·KL, identity STE, Adam on
    every position at a constant learning rate."""
    _, rm_t, lm, rm, _ = pair
    cfg = nj.DTOConfig(
        objective="article", num_steps=5, learning_rate=0.05, lambda_kl=lambda_kl,
        kl_direction=kl_direction, schedule="constant", update_postfix=True, grad_caching=False,
    )  # fmt: skip
    prob = _article_problem(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the KL warning is tested below
        out = nj.refine(lm, rm, prob, cfg, jax.random.key(0))
    z, trace = td.article_optimize(
        torch.tensor(np.asarray(prob.init)), rm_t, torch.tensor(np.asarray(prob.ref_logits)),
        lambda_kl, 0.05, 5, kl_direction=kl_direction,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = _bounds(lm, rm, prob, cfg, jax.random.key(0))
    tol.assert_within(out.logits, z.numpy(), b["logits"], "logits")
    np.testing.assert_array_equal(np.asarray(out.tokens), z.numpy().argmax(-1))
    tol.assert_within(out.trace.loss, [t[0] for t in trace], b["loss"], "losses")
    tol.assert_within(out.trace.reward, [t[1] for t in trace], b["reward"], "rewards")
    tol.assert_within(out.trace.kl, [t[2] for t in trace], b["kl"], "kl")


def test_article_objective_warnings(pair):
    _, _, lm, rm, _ = pair
    prob = _article_problem(8)
    base = dict(objective="article", learning_rate=0.05, schedule="constant", lambda_kl=0.1)
    with pytest.warns(UserWarning, match="9 straight-through steps.*bounds useful STE"):
        nj.refine(lm, rm, prob, nj.DTOConfig(num_steps=9, kl_warn_threshold=1e3, **base),
                  jax.random.key(0))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 8 steps, or a raised bound: no warning at all
        nj.refine(lm, rm, prob, nj.DTOConfig(num_steps=8, kl_warn_threshold=1e3, **base),
                  jax.random.key(0))  # fmt: skip
        nj.refine(lm, rm, prob, nj.DTOConfig(num_steps=9, ste_warn_steps=9,
                  kl_warn_threshold=1e3, **base), jax.random.key(0))  # fmt: skip
    # A reference far from the logits: the KL collapse warning names the step.
    far = np.zeros_like(np.asarray(prob.init))
    far[:, 5] = 30.0
    collapse = nj.RefineProblem([5], [], [], prob.init, ref_logits=far)
    with pytest.warns(UserWarning, match="KL above 2.0 nats at step 0"):
        out = nj.refine(lm, rm, collapse, nj.DTOConfig(num_steps=2, **base), jax.random.key(0))
    assert np.asarray(out.trace.kl_collapse).all()


# -- rm_embed over two tokenizers ------------------------------------------------------------------


def _torch_model(auto, vocab, seed):
    torch.manual_seed(seed)
    cfg = hf_config("qwen2", num_labels=1)
    cfg.vocab_size = vocab
    model = auto.from_config(cfg).eval()
    sharpen_(model)
    return model


def test_rm_embed_aligns_two_tokenizers_like_the_twin(tmp_path):
    """An LM and an RM with different tokenizers (different vocabularies and id orders): refine
    with rm_embed = align_rm_embeddings(...) equals the twin fed the same aligned table, and
    differs from using the RM's table unaligned (which would read wrong rows)."""
    tok_lm = make_chatml_tokenizer(vocab_size=300)
    tok_rm = make_chatml_tokenizer(OTHER_TEXTS, vocab_size=290)
    lm_t = _torch_model(tr.AutoModelForCausalLM, 300, 31)
    rm_t = _torch_model(tr.AutoModelForSequenceClassification, 290, 32)
    lm_t.save_pretrained(tmp_path / "lm")
    rm_t.save_pretrained(tmp_path / "rm")
    lm, rm = nj.load_causal_lm(tmp_path / "lm"), nj.load_reward_model(tmp_path / "rm")
    aligned = nj.align_rm_embeddings(tok_lm, tok_rm, rm.embed_matrix(), 300)
    assert aligned.shape == (300, rm.config.hidden_size)
    idx = np.asarray(nj.vocab.align_rm_vocab_indices(tok_lm, tok_rm, 300)[0])
    assert (idx != np.arange(300)).any(), "the tokenizers must really differ"
    prob = _problem(5, v=300, rm_v=290)
    cfg = nj.DTOConfig(num_steps=4, learning_rate=0.3, update_postfix=True, grad_caching=False)
    out = nj.refine(lm, rm, prob, cfg, jax.random.key(0), rm_embed=aligned)
    ref = _paper_twin(lm_t, rm_t, prob, cfg, rm_embed=torch.tensor(np.asarray(aligned)))
    _assert_paper_parity(out, ref, _bounds(lm, rm, prob, cfg, jax.random.key(0), rm_embed=aligned))
    # The default (no rm_embed) refuses the vocabulary mismatch instead of misreading rows.
    with pytest.raises(nj.vocab.VocabSizeMismatchError, match="rm_embed"):
        nj.refine(lm, rm, prob, cfg, jax.random.key(0))


# -- Gumbel noise and refine_batch -----------------------------------------------------------------


def test_gumbel_noise_is_keyed_and_scaled(pair):
    _, _, lm, rm, _ = pair
    prob = _problem(9)
    cfg = nj.DTOConfig(num_steps=4, learning_rate=0.3, gumbel_scale=1.0, update_postfix=True)
    a = nj.refine(lm, rm, prob, cfg, jax.random.key(1))
    b = nj.refine(lm, rm, prob, cfg, jax.random.key(1))
    c = nj.refine(lm, rm, prob, cfg, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    # not a tolerance: other noise moves the logits by O(0.1) (np.allclose's 1e-8 + 1e-5·|b|
    # would only be met by the same run)
    assert not np.allclose(np.asarray(a.logits), np.asarray(c.logits))
    quiet = nj.DTOConfig(num_steps=4, learning_rate=0.3, update_postfix=True)
    q1 = nj.refine(lm, rm, prob, quiet, jax.random.key(1))
    q2 = nj.refine(lm, rm, prob, quiet, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(q1.logits), np.asarray(q2.logits))
    assert not np.allclose(np.asarray(a.logits), np.asarray(q1.logits))  # noise vs none: O(0.1)


@pytest.mark.parity
def test_refine_batch_article_rows_equal_refine(pair):
    _, _, lm, rm, _ = pair
    cfg = nj.DTOConfig(objective="article", num_steps=3, learning_rate=0.05,
                       schedule="constant", update_postfix=True, kl_warn_threshold=1e3)  # fmt: skip
    probs = [_article_problem(10, k=3), _article_problem(11, k=5)]
    batched = nj.refine_batch(lm, rm, probs, cfg, jax.random.key(3), batch_size=2)
    bounds = tol.refine_bounds(lm, rm, cfg, probs, jax.random.key(3), batch_size=2)
    for i, (prob, got) in enumerate(zip(probs, batched)):
        alone = nj.refine(lm, rm, prob, cfg, jax.random.key(3))
        tol.assert_within(got.logits, alone.logits, bounds["logits"][i], f"row {i} logits")


# -- bfloat16 ---------------------------------------------------------------------------------


def test_bfloat16_dto_stays_close_to_float32(pair):
    """bf16 weights and activations: the full-step losses within 5% of the fp32 loss scale and
    the refined logits within 5% of their fp32 range; the same tokens at ≥ 75% of positions."""
    _, _, lm, rm, d = pair
    lm16 = nj.load_causal_lm(d / "lm", dtype="bfloat16")
    rm16 = nj.load_reward_model(d / "rm", dtype="bfloat16")
    cfg = nj.DTOConfig(num_steps=4, learning_rate=0.05, update_postfix=True, grad_caching=False)
    probs = [_problem(12 + i, k=6) for i in range(3)]
    for prob in probs:
        a = nj.refine(lm, rm, prob, cfg, jax.random.key(0))
        b = nj.refine(lm16, rm16, prob, cfg, jax.random.key(0))
        assert np.isfinite(np.asarray(b.trace.loss)).all()
        la, lb = np.asarray(a.trace.loss), np.asarray(b.trace.loss)
        # Not a float32 comparison: bfloat16 (u = 2^-8) on weights and every activation, ~10
        # roundings in sequence per forward (test_models' bf16 derivation) ≈ 10u ≈ 3.9e-2 of
        # the scale; 0.05 ≈ 13u covers it (a loss scale below 1 counts as 1: the loss sums
        # log-probs of order 1).
        assert np.abs(la - lb).max() <= 0.05 * max(np.abs(la).max(), 1.0)
        za, zb = np.asarray(a.logits, np.float32), np.asarray(b.logits, np.float32)
        assert np.abs(za - zb).max() <= 0.05 * (za.max() - za.min())
        assert (np.asarray(a.tokens) == np.asarray(b.tokens)).mean() >= 0.75
