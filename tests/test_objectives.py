"""Loss terms: definitions, KL directions and torch ``F.kl_div`` semantics, parity, errors.

Tolerances are derived from float32 rounding (tests/tolerances.py), never fitted: a mean or sum
gets Higham's ``γ_n · Σ|terms|`` bound, a log-softmax sum or KL :func:`_kl_bound`, and a gradient
(cancellation in ``softmax − target`` rules out a closed form per entry) the backward-error ball of
radius ``γ_V`` + the exp/log ulps around its inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nabla_jax.functional.objectives import (
    KL_DIRECTIONS,
    LossTerms,
    article_loss,
    article_reward,
    article_terms,
    kl_divergence,
    kl_ref_theta,
    kl_theta_ref,
    paper_loglik,
    paper_loss,
    paper_terms,
    resolve_kl_direction,
    score_reward,
)
from nabla_jax.functional.ste import st_softmax, ste_argmax, ste_argmax_embed
from tests import tolerances as tol
from tests.reference import torch_objectives as tob
from tests.reference import torch_ste

pytestmark = pytest.mark.parity


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _normal(seed, shape, scale=1.0):
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    return jnp.asarray(x, dtype=jnp.float32)


def _t(x, grad=False):
    return torch.tensor(np.asarray(x), dtype=torch.float32, requires_grad=grad)


def _jgrad(f, argnums=0):
    return jax.jit(jax.grad(f, argnums=argnums))


def _close_grad(grad_fn, args, want, n, transcendentals=2):
    """``grad_fn(*args)`` against another evaluation order of it (its torch twin, another
    path): the ball around ``args`` of radius ``γ_n`` + ``transcendentals`` exp/log ulps (``n``:
    the softmax width, the longest reduction the gradient contains)."""
    got = grad_fn(*args)
    tol.assert_ball_close(got, want, lambda a: grad_fn(*a), tuple(args), n, transcendentals,
                          "gradient")  # fmt: skip


_kl_bound = tol.kl_bound


# ---------------------------------------------------------------------------- rewards


def test_article_reward_matches_torch():
    x = _normal(0, (2, 5, 3))
    xt = _t(x, grad=True)
    rt = tob.article_reward(xt)
    rt.backward()
    bound = tol.mean_bound(np.asarray(x)[:, -1, :])  # the mean of B*C last-position scores
    tol.assert_within(article_reward(x), rt.item(), bound)
    tol.assert_within(article_reward(x), np.asarray(x)[:, -1, :].mean(), bound)
    _close_grad(_jgrad(article_reward), (x,), xt.grad.numpy(), x.size, 0)


def test_article_reward_rejects_classification_scores():
    with pytest.raises(ValueError, match="use score_reward"):
        article_reward(_normal(0, (2, 1)))
    with pytest.raises(ValueError, match="empty axis"):
        article_reward(jnp.zeros((1, 0, 2)))


def test_score_reward_forms():
    s = _normal(1, (4,))
    mean_tol, sum_tol = tol.mean_bound(s), tol.sum_bound(s)  # a mean / sum of B scores
    tol.assert_within(score_reward(s), tob.score_reward(_t(s)).item(), mean_tol)
    tol.assert_within(score_reward(s[:, None]), np.mean(np.asarray(s)), mean_tol)
    tol.assert_within(score_reward(s, reduce="sum"), np.sum(np.asarray(s)), sum_tol)
    np.testing.assert_array_equal(score_reward(s, reduce="none"), s)
    assert score_reward(s[:1]).shape == () and float(score_reward(s[:1])) == float(s[0])


def test_score_reward_errors():
    with pytest.raises(ValueError, match="use article_reward"):
        score_reward(_normal(0, (2, 3, 1)))
    with pytest.raises(ValueError, match=r"\[B, 1\]"):
        score_reward(_normal(0, (2, 2)))
    with pytest.raises(ValueError, match="reduce"):
        score_reward(_normal(0, (2,)), reduce="max")
    with pytest.raises(TypeError, match="floating"):
        score_reward(jnp.arange(3))


# ---------------------------------------------------------------------------- KL


@pytest.mark.parametrize("shape", [(6, 11), (3, 4, 11)])
@pytest.mark.parametrize("direction", ["ref_theta", "theta_ref"])
def test_kl_matches_torch_kl_div_batchmean(shape, direction):
    z = _normal(2, shape, scale=2.0)
    r = _normal(3, shape, scale=2.0)
    ours = resolve_kl_direction(direction)
    twin = {"ref_theta": tob.kl_ref_theta, "theta_ref": tob.kl_theta_ref}[direction]
    zt = _t(z, grad=True)
    kt = twin(zt, _t(r))
    kt.backward()
    tol.assert_within(ours(z, r), kt.item(), _kl_bound(r, z, shape[0], direction))
    _close_grad(_jgrad(ours), (z, r), zt.grad.numpy(), shape[-1])


def test_kl_batchmean_divides_by_first_dim_only():
    z = _normal(4, (3, 4, 7))
    r = _normal(5, (3, 4, 7))
    p = np.asarray(jax.nn.softmax(r, -1), np.float64)
    logq = np.asarray(jax.nn.log_softmax(z, -1), np.float64)
    total = np.sum(p * (np.log(p) - logq))
    # one float32 evaluation against the exact value: within the two-evaluation bound
    tol.assert_within(kl_ref_theta(z, r), total / 3, _kl_bound(r, z, 3))  # B, not B*T
    tol.assert_within(
        kl_ref_theta(z.reshape(12, 7), r.reshape(12, 7)), total / 12, _kl_bound(r, z, 12)
    )


def test_kl_zero_on_equal_and_asymmetric():
    z = _normal(6, (5, 9), scale=2.0)
    r = _normal(7, (5, 9), scale=2.0)
    for direction in KL_DIRECTIONS:
        tol.assert_within(kl_divergence(z, z, direction), 0.0, _kl_bound(z, z, 5, direction))
        assert float(kl_divergence(z, r, direction)) > _kl_bound(r, z, 5, direction)
    a, b = float(kl_ref_theta(z, r)), float(kl_theta_ref(z, r))
    # the two directions differ mathematically, by far more than either's rounding
    assert abs(a - b) > _kl_bound(r, z, 5) + _kl_bound(r, z, 5, "theta_ref")
    # roles swap: the same KL through the two code paths
    tol.assert_within(kl_ref_theta(z, r), kl_theta_ref(r, z), _kl_bound(r, z, 5))


def test_kl_zero_reference_probabilities_like_torch():
    z = _normal(8, (4, 6))
    r = np.array(_normal(9, (4, 6)))
    r[:, :2] = -np.inf  # p_ref = 0 there: xlogy -> 0 contribution
    r = jnp.asarray(r)
    ours = kl_ref_theta(z, r)
    assert np.isfinite(float(ours))
    tol.assert_within(ours, tob.kl_ref_theta(_t(z), _t(r)).item(), _kl_bound(r, z, 4))
    assert np.all(np.isfinite(_jgrad(kl_ref_theta)(z, r)))


def test_kl_theta_ref_gradient_finite_when_p_theta_underflows():
    """Torch's fp32 kl_div target gradient is NaN where p_θ underflows to 0; ours stays finite and
    equals the float64 torch gradient (where nothing underflows)."""
    z = np.array(_normal(10, (3, 8)))
    z[:, 0] = 200.0  # every other p_theta underflows to 0 in fp32
    z = jnp.asarray(z)
    r = _normal(11, (3, 8))
    zt = torch.tensor(np.asarray(z), dtype=torch.float64, requires_grad=True)
    kt = tob.kl_theta_ref(zt, torch.tensor(np.asarray(r), dtype=torch.float64))
    kt.backward()
    # against float64: one float32 evaluation, within the two-evaluation bound
    tol.assert_within(kl_theta_ref(z, r), kt.item(), _kl_bound(r, z, 3, "theta_ref"))
    g = _jgrad(kl_theta_ref)(z, r)
    assert np.all(np.isfinite(g))
    _close_grad(_jgrad(kl_theta_ref), (z, r), zt.grad.numpy(), 8)


def test_kl_reference_is_constant():
    z = _normal(12, (3, 5))
    r = _normal(13, (3, 5))
    for fn in (kl_ref_theta, kl_theta_ref):
        np.testing.assert_array_equal(_jgrad(fn, argnums=1)(z, r), np.zeros((3, 5)))


def test_kl_errors():
    z = _normal(0, (3, 5))
    with pytest.raises(ValueError, match="same shape"):
        kl_ref_theta(z, _normal(1, (3, 6)))
    with pytest.raises(ValueError, match="same shape"):
        kl_theta_ref(z, _normal(1, (1, 3, 5)))
    with pytest.raises(ValueError, match=r"\[T, V\] or \[B, T, V\]"):
        kl_ref_theta(z[0], z[0])
    with pytest.raises(TypeError, match="floating"):
        kl_ref_theta(jnp.ones((3, 5), jnp.int32), z)
    for bad in ("theta_theta", "KL", None, 0):
        with pytest.raises(ValueError, match="kl direction must be one of"):
            resolve_kl_direction(bad)
    with pytest.raises(ValueError, match="kl direction"):
        kl_divergence(z, z, "forward")


def test_resolve_kl_direction_mapping():
    assert resolve_kl_direction("ref_theta") is kl_ref_theta
    assert resolve_kl_direction("theta_ref") is kl_theta_ref


# ---------------------------------------------------------------------------- log-likelihood


@pytest.mark.parametrize("use_mask", [False, True])
def test_paper_loglik_matches_torch(use_mask):
    z = _normal(14, (5, 13))
    pred = _normal(15, (5, 13), scale=3.0)
    mask = jnp.asarray([1.0, 1.0, 0.0, 1.0, 0.0]) if use_mask else None
    y = st_softmax(z, 0.7)
    zt, pt = _t(z, grad=True), _t(pred, grad=True)
    lt = tob.paper_loglik(
        torch_ste.st_softmax(zt, 0.7), pt, 1e-3, None if mask is None else _t(mask)
    )
    lt.backward()
    w = np.asarray(y) * (1.0 if mask is None else np.asarray(mask)[:, None])
    bound = 1e-3 * tol.log_softmax_sum_bound(w, tol.softmax64(pred)[1])
    tol.assert_within(paper_loglik(y, pred, 1e-3, mask), lt.item(), bound)
    f = lambda z, p: paper_loglik(st_softmax(z, 0.7), p, 1e-3, mask)
    grads = _jgrad(f, argnums=(0, 1))
    _close_grad(lambda z, p: grads(z, p)[0], (z, pred), zt.grad.numpy(), 13)
    _close_grad(lambda z, p: grads(z, p)[1], (z, pred), pt.grad.numpy(), 13)


def test_paper_loglik_definition():
    pred = _normal(16, (4, 6))
    ids = np.array([1, 0, 5, 2])
    y = jnp.asarray(np.eye(6, dtype=np.float32)[ids])
    logp = np.asarray(jax.nn.log_softmax(pred, -1))
    expected = 0.5 * logp[np.arange(4), ids].sum()
    # float32 log_softmax on both sides; the sums differ in order only
    bound = 0.5 * tol.log_softmax_sum_bound(np.asarray(y), tol.softmax64(pred)[1])
    tol.assert_within(paper_loglik(y, pred, nll_coeff=0.5), expected, bound)
    assert float(paper_loglik(y, pred)) <= 0.0
    # leading batch dims with a matching mask
    yb, pb = jnp.stack([y, y]), jnp.stack([pred, pred])
    mb = jnp.asarray([[1, 1, 1, 1], [0, 0, 0, 0]])
    tol.assert_within(paper_loglik(yb, pb, 0.5, mb), expected, bound)


def test_paper_loglik_errors():
    y = _normal(0, (4, 6))
    with pytest.raises(ValueError, match="same shape"):
        paper_loglik(y, _normal(1, (4, 7)))
    with pytest.raises(ValueError, match="mask must have shape"):
        paper_loglik(y, y, mask=jnp.ones(5))
    with pytest.raises(ValueError, match=r"\[K, V\]"):
        paper_loglik(y[0], y[0])


# ---------------------------------------------------------------------------- composite losses


def test_composite_losses_and_terms():
    r, kl, ll = jnp.float32(0.7), jnp.float32(0.3), jnp.float32(-2.0)
    # -r + c·kl and -(ll + c·r): two correctly rounded operations on float32 scalars, the
    # same ones in the same order in torch (rtol 1e-7: assert_allclose's default, > 2 ulps)
    np.testing.assert_allclose(article_loss(r, kl, 0.1), tob.article_loss(_t(r), _t(kl), 0.1))
    np.testing.assert_allclose(paper_loss(ll, r, 2.0), tob.paper_loss(_t(ll), _t(r), 2.0))
    # against the decimal values: the float32 inputs' own rounding (half an ulp of each of
    # r, kl, ll, 0.1) plus the two operations, on the magnitudes involved
    tol.assert_within(article_loss(r, kl, 0.1), -0.7 + 0.03, tol.elementwise_bound([0.7], 4))
    tol.assert_within(paper_loss(ll, r, 2.0), -(-2.0 + 1.4), tol.elementwise_bound([2.0], 4))
    a = article_terms(r, kl, 0.1)
    p = paper_terms(ll, r, 2.0)
    assert isinstance(a, LossTerms) and float(a.loglik) == 0.0 and float(a.kl) == float(kl)
    assert float(p.kl) == 0.0 and float(p.loss) == float(paper_loss(ll, r, 2.0))

    def step(c, x):  # LossTerms ride in a lax.scan trace
        return c, paper_terms(x, 2 * x)

    _, trace = jax.lax.scan(step, 0.0, jnp.arange(3.0))
    assert trace.loss.shape == (3,)
    # small integers: -(x + 2x) is exact in float32
    np.testing.assert_array_equal(trace.loss, -(np.arange(3.0) * 3))


def test_article_loss_end_to_end_gradient_matches_torch_sketch():
    """The sketch's loss on a toy per-position reward net: STE embedding -> linear RM head."""
    t_len, v, d, c = 6, 17, 8, 3
    z = _normal(20, (t_len, v), scale=2.0)
    ref = _normal(21, (t_len, v), scale=2.0)
    emb_table = _normal(22, (v, d))
    head = _normal(23, (d, c))

    def loss(z):
        rm_logits = (ste_argmax_embed(z, emb_table) @ head)[None]  # [1, T, C]
        return article_loss(article_reward(rm_logits), kl_ref_theta(z, ref), 0.1)

    zt = _t(z, grad=True)
    rm_t = (torch_ste.ste_argmax(zt) @ _t(emb_table)) @ _t(head)
    lt = tob.article_loss(tob.article_reward(rm_t[None]), tob.kl_ref_theta(zt, _t(ref)), 0.1)
    lt.backward()
    # a shallow chain (gather, two small matmuls, a mean and a KL): the ball around z
    tol.assert_ball_close(jax.jit(loss)(z), lt.item(), jax.jit(lambda a: loss(*a)), (z,), v, 2)
    _close_grad(_jgrad(loss), (z,), zt.grad.numpy(), v)
    # and the dense one-hot path agrees with the gather path
    dense = lambda z: article_loss(
        article_reward(((ste_argmax(z) @ emb_table) @ head)[None]), kl_ref_theta(z, ref), 0.1
    )
    _close_grad(_jgrad(loss), (z,), _jgrad(dense)(z), v)
