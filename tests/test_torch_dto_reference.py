"""Self-checks of the PyTorch DTO twins (tests/reference/torch_dto.py) on tiny random HF models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import tolerances as tol
from tests.hf_models import VOCAB, hf_model
from tests.reference import torch_dto

pytestmark = pytest.mark.parity

K = 4
LM_PREFIX = [5, 17, 33, 8, 64]
RM_PREFIX = [7, 21, 40]
RM_SUFFIX = [9, 11]


@pytest.fixture(scope="module")
def models():
    lm = hf_model("qwen2", "lm", seed=0)
    rm = hf_model("qwen2", "score", seed=1)
    return lm, rm


def _randn(seed, *shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g)


def _run(models, init, **kw):
    lm, rm = models
    return torch_dto.paper_dto(lm, rm, LM_PREFIX, RM_PREFIX, RM_SUFFIX, init, **kw)


# --------------------------------------------------------------------------------------------------
# article
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["lm", "score"])
def test_article_first_step_gradient_is_identity_ste(head):
    rm = hf_model("qwen2", head, seed=3)
    t, lam, lr = 6, 0.1, 0.05
    z0 = _randn(0, t, VOCAB)
    ref = _randn(1, t, VOCAB)
    out, trace, grads = torch_dto.article_optimize(
        z0, rm, ref, lambda_kl=lam, learning_rate=lr, num_steps=3, return_grads=True
    )
    assert out.shape == (t, VOCAB) and len(trace) == 3 and len(grads) == 3

    # Analytic: d(-reward)/d onehot (identity STE) + λ (softmax(Z) - softmax(R)) / T.
    onehot = F.one_hot(z0.argmax(-1), VOCAB).float().requires_grad_(True)
    emb = onehot @ rm.get_input_embeddings().weight.detach()
    logits = rm(inputs_embeds=emb[None], use_cache=False).logits
    reward = logits[:, -1, :].mean() if logits.ndim == 3 else logits.mean()
    (d_onehot,) = torch.autograd.grad(reward, onehot)
    expected = -d_onehot + lam * (F.softmax(z0, -1) - F.softmax(ref, -1)) / t

    # the twin's loop against this direct computation: two evaluation orders of one RM
    # forward/backward, within its ball around the RM's weights (perturbed torch copies)
    def run(m):
        _, tr, gs = torch_dto.article_optimize(
            z0, m, ref, lambda_kl=lam, learning_rate=lr, num_steps=1, return_grads=True
        )
        return gs[0].numpy(), tr[0][1]

    g_bound, r_bound = tol.torch_forward_tolerance(run, rm, extra=t)
    tol.assert_within(grads[0].numpy(), expected.numpy(), g_bound, "first-step gradient")

    kl = F.kl_div(F.log_softmax(z0, -1), F.softmax(ref, -1), reduction="batchmean")
    loss0, reward0, kl0 = trace[0]
    tol.assert_within(reward0, reward.item(), r_bound, "reward")
    tol.assert_within(kl0, kl.item(), tol.kl_bound(ref.numpy(), z0.numpy(), t), "kl")
    # -reward + λ·kl: three rounded operations on these magnitudes
    loss_bound = tol.elementwise_bound(abs(reward0) + lam * abs(kl0), ops=3)
    tol.assert_within(loss0, -reward0 + lam * kl0, loss_bound, "loss")
    # The models' parameters are left trainable and without gradients.
    assert all(p.requires_grad and p.grad is None for p in rm.parameters())


def test_article_first_adam_step_is_signed():
    rm = hf_model("qwen2", "score", seed=3)
    z0, ref = _randn(2, 5, VOCAB), _randn(3, 5, VOCAB)
    out, _, grads = torch_dto.article_optimize(
        z0, rm, ref, learning_rate=0.05, num_steps=1, return_grads=True
    )
    g = grads[0]
    # Adam's first step, elementwise: bias corrections, √(g²), + eps, ÷, × lr, − — about 8
    # correctly rounded operations on the step (lr) and the last on |z0| + lr
    bound = tol.elementwise_bound(z0.abs().numpy() + 0.05, ops=8)
    tol.assert_within(out.numpy(), (z0 - 0.05 * g / (g.abs() + 1e-8)).numpy(), bound, "step")


def test_article_kl_directions():
    z, r = _randn(4, 3, VOCAB), _randn(5, 3, VOCAB)
    p, q = F.softmax(z, -1), F.softmax(r, -1)
    kl_rt = (q * (q.log() - p.log())).sum() / 3
    kl_tr = (p * (p.log() - q.log())).sum() / 3
    zn, rn = z.numpy(), r.numpy()
    tol.assert_within(torch_dto.article_kl(z, r, "ref_theta"), kl_rt, tol.kl_bound(rn, zn, 3))
    tol.assert_within(
        torch_dto.article_kl(z, r, "theta_ref"), kl_tr, tol.kl_bound(rn, zn, 3, "theta_ref")
    )


# --------------------------------------------------------------------------------------------------
# paper DTO
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["logits", "latents"])
def test_paper_runs_and_reports(models, mode):
    lm, _ = models
    n = 6
    if mode == "logits":
        init = _randn(10, K, VOCAB)
    else:
        init = _randn(10, K, lm.config.hidden_size)
    res = _run(models, init, mode=mode, num_steps=n, learning_rate=0.05)
    assert res["logits"].shape == (K, VOCAB)
    assert res["param"].shape == init.shape
    assert torch.equal(res["tokens"], res["logits"].argmax(-1))
    for key in ("losses", "rewards", "logliks", "full_steps", "lrs", "n_changed"):
        assert len(res[key]) == n, key
    assert all(math.isfinite(v) for v in res["losses"] + res["rewards"] + res["logliks"])
    assert res["full_steps"][0]
    assert res["model_calls"] == 4 * sum(res["full_steps"])
    if mode == "latents":
        w = lm.get_output_embeddings().weight.detach()
        # a D-term dot per entry: γ_D of Σ_d |param · w|
        terms = (res["param"].abs() @ w.abs().T).max().item()
        bound = tol.reduction_bound(terms, lm.config.hidden_size)
        tol.assert_within(res["logits"].numpy(), (res["param"] @ w.T).numpy(), bound)


@pytest.mark.parametrize("mode", ["logits", "latents"])
def test_paper_full_step_matches_token_id_forward(models, mode):
    """Step 0's loglik / reward equal the plain ``input_ids`` forward at the initial tokens."""
    lm, rm = models
    dim = VOCAB if mode == "logits" else lm.config.hidden_size
    init = _randn(11, K, dim)
    res = _run(models, init, mode=mode, num_steps=1, nll_coeff=0.5, reward_coeff=2.0)
    z0 = init if mode == "logits" else init @ lm.get_output_embeddings().weight.detach().T
    toks = z0.argmax(-1).tolist()
    assert 0 not in toks  # pad id 0 would confuse the id-based RM pooling below
    with torch.no_grad():
        lm_logits = lm(input_ids=torch.tensor([LM_PREFIX + toks]), use_cache=False).logits[0]
        p = len(LM_PREFIX)
        lp = F.log_softmax(lm_logits[p - 1 : p + K - 1], -1)
        loglik = 0.5 * lp[torch.arange(K), torch.tensor(toks)].sum()
        ids = torch.tensor([RM_PREFIX + toks + RM_SUFFIX])
        reward = rm(input_ids=ids, use_cache=False).logits[0, 0]
    # embeddings of one-hots against input ids: two evaluations of the same forwards, within
    # their ball around both models' weights
    run = lambda ms: tuple(  # noqa: E731
        _run(ms, init, mode=mode, num_steps=1, nll_coeff=0.5, reward_coeff=2.0)[k][0]
        for k in ("logliks", "rewards", "losses")
    )
    b_ll, b_r, b_loss = tol.torch_forward_tolerance(run, models, extra=len(LM_PREFIX) + K)
    tol.assert_within(res["logliks"][0], loglik.item(), b_ll, "loglik")
    tol.assert_within(res["rewards"][0], reward.item(), b_r, "reward")
    tol.assert_within(res["losses"][0], -(loglik + 2.0 * reward).item(), b_loss, "loss")


@pytest.mark.parametrize("mode", ["logits", "latents"])
def test_paper_grad_caching_accounting(models, mode):
    lm, _ = models
    n = 8
    if mode == "logits":
        init, lr = _randn(12, K, VOCAB, scale=0.05), 0.05
    else:
        init, lr = _randn(12, K, lm.config.hidden_size, scale=0.5), 0.2
    res = _run(models, init, mode=mode, num_steps=n, learning_rate=lr, schedule="constant")
    full, changed = res["full_steps"], res["n_changed"]
    n_full = sum(full)
    assert 1 <= n_full <= n
    assert n_full == 1 + sum(c > 0 for c in changed[:-1])
    # A step is full exactly when it is step 0 or the previous step changed a token.
    assert full == [True] + [c > 0 for c in changed[:-1]]
    # The test is only meaningful if both kinds of step occur.
    assert any(full[1:]) and not all(full), (full, changed)
    # Surrogate steps repeat the last full step's reward / loglik.
    for s in range(1, n):
        if not full[s]:
            assert res["rewards"][s] == res["rewards"][s - 1]
            assert res["logliks"][s] == res["logliks"][s - 1]
    assert res["model_calls"] == 4 * n_full

    nocache = _run(
        models,
        init,
        mode=mode,
        num_steps=n,
        learning_rate=lr,
        schedule="constant",
        grad_caching=False,
    )
    assert all(nocache["full_steps"]) and nocache["model_calls"] == 4 * n
    # Step 0 is identical with and without caching.
    assert nocache["losses"][0] == res["losses"][0]


def test_paper_surrogate_gradient_is_cached_linearisation(models):
    """A surrogate step's gradient is ``J_soft(Z_s)^T g``, ``g`` from the last full step."""
    init = _randn(13, K, VOCAB, scale=3.0)  # confident: tokens won't move at a tiny lr
    res = _run(
        models, init, num_steps=3, learning_rate=1e-4, schedule="constant", return_grads=True
    )
    assert res["full_steps"] == [True, False, False]
    assert res["model_calls"] == 4
    # Recompute g at step 0 (full) and the surrogate gradient at step 1's parameters.
    lm, rm = models
    z = init.clone().requires_grad_(True)
    y = torch_dto.st_softmax(z, 1.0, hard=True)
    y.retain_grad()
    with torch_dto.frozen(lm, rm):
        loss, _, _ = torch_dto.paper_forward(y, lm, rm, LM_PREFIX, RM_PREFIX, RM_SUFFIX)
        loss.backward()
    g = y.grad.detach()
    g0 = z.grad.clone()
    g0[1:] = 0
    torch.testing.assert_close(res["grads"][0], g0)
    z1 = init.clone()
    z1[0] -= 1e-4 * g0[0] / (g0[0].abs() + 1e-8)  # Adam's first step
    z1.requires_grad_(True)
    (g * torch_dto.st_softmax(z1, 1.0, hard=True)).sum().backward()
    g1 = z1.grad.clone()
    g1[1:] = 0
    # the twin's surrogate step against this re-derivation: the same cached g through one
    # softmax Jacobian, J^T g = p ⊙ (g − ⟨p, g⟩), at parameters one (separately rounded) Adam
    # step apart: each entry's terms |p·g| and p·Σ|p·g| carry the softmax's relative error
    # (softmax_rel: γ_V, exp ulps, the parameters' rounding through exp), twice
    pz = tol.softmax64(z1.detach().numpy())[0]
    pg = np.abs(pz * g.double().numpy())
    terms = pg + pz * pg.sum(-1, keepdims=True)
    bound = 2 * tol.softmax_rel(z1.detach().numpy()) * float(terms.max()) + tol.TINY32
    tol.assert_within(res["grads"][1].numpy(), g1.numpy(), bound, "surrogate gradient")


@pytest.mark.parametrize("mode", ["logits", "latents"])
def test_paper_only_position_zero_moves(models, mode):
    lm, _ = models
    dim = VOCAB if mode == "logits" else lm.config.hidden_size
    init = _randn(14, K, dim)
    res = _run(models, init, mode=mode, num_steps=3, learning_rate=0.05)
    assert torch.equal(res["param"][1:], init[1:])
    assert not torch.equal(res["param"][0], init[0])
    if mode == "logits":
        assert torch.equal(res["logits"][1:], init[1:])

    both = _run(models, init, mode=mode, num_steps=1, learning_rate=0.05, update_postfix=True)
    assert not torch.equal(both["param"][1:], init[1:])
    # torch Adam's L2 weight decay is added after the mask: every position moves.
    wd = _run(models, init, mode=mode, num_steps=2, learning_rate=0.05, weight_decay=0.1)
    assert (wd["param"][1:] != init[1:]).all(dim=-1).all()


# LambdaLR multipliers for num_steps 7, warmup 2, min_lr_ratio 0.2, written out by hand (not with
# the function that drives the twin's scheduler): warmup 0, 1/2; then, with p = (s - 2) / 5,
# cosine max(0.2, (1 + cos πp) / 2), linear max(0.2, (7 - s) / 5), constant 1.
_COS = [0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]  # 1, .905, .655, .345, .095
EXPECTED_MULT = {
    "cosine": [0.0, 0.5, 1.0, _COS[1], _COS[2], _COS[3], 0.2],
    "linear": [0.0, 0.5, 1.0, 0.8, 0.6, 0.4, 0.2],
    "constant": [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0],
}


def test_paper_lr_schedule(models):
    init = _randn(15, K, VOCAB, scale=3.0)  # confident: mostly surrogate steps (cheap)
    lr, n, w = 0.02, 7, 2
    for schedule in ("cosine", "linear", "constant"):
        res = _run(
            models,
            init,
            num_steps=n,
            learning_rate=lr,
            schedule=schedule,
            warmup_steps=w,
            min_lr_ratio=0.2,
            grad_caching=True,
        )
        # float64 (Python floats and torch's LambdaLR), not float32: a handful of operations at
        # 2^-53 ≈ 1.1e-16 each; rel 1e-12 leaves margin for math.cos's ulps, still 1e5× below
        # any float32-sized slip
        assert res["lrs"] == pytest.approx([lr * m for m in EXPECTED_MULT[schedule]], rel=1e-12)
    m = torch_dto.lr_multiplier
    assert m(0, num_steps=10, warmup_steps=2) == 0.0
    assert m(1, num_steps=10, warmup_steps=2) == 0.5
    assert m(2, num_steps=10, warmup_steps=2) == 1.0
    # float64: (1 + cos(π/2)) / 2 is 0.5 + 3e-17 (cos(π/2) is not 0); approx's default rel 1e-6
    assert m(6, num_steps=10, warmup_steps=2) == pytest.approx(0.5)
    assert m(9, num_steps=10, warmup_steps=2, min_lr_ratio=0.3) == 0.3
    assert m(5, num_steps=10, schedule="linear") == 0.5
    assert m(9, num_steps=10, schedule="linear", min_lr_ratio=0.3) == 0.3


def test_paper_adamw_decays_all_positions(models):
    init = _randn(16, K, VOCAB)
    res = _run(
        models,
        init,
        num_steps=1,
        learning_rate=0.1,
        optimizer="adamw",
        weight_decay=0.5,
        schedule="constant",
    )
    torch.testing.assert_close(res["param"][1:], init[1:] * (1 - 0.1 * 0.5))
