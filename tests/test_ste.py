"""Straight-through estimators: definitions, exactness, gather-forward embedding, torch parity.

Tolerances are derived from float32 rounding (tests/tolerances.py), never fitted: a softmax gets
:func:`tests.tolerances.softmax_bound`, a sum Higham's ``γ_n · Σ|terms|``, and a gradient (the
softmax Jacobian cancels, so no closed form per entry) the backward-error ball of radius ``γ_V``
plus the exp ulps around its inputs. One-hot forward values, and gathers or one-hot matmuls
(adding exact zeros to one product is exact), are compared bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nabla_jax.functional.ste import (
    gumbel_noise,
    st_softmax,
    st_softmax_embed,
    ste_argmax,
    ste_argmax_embed,
)
from tests import tolerances as tol
from tests.reference import torch_ste


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _normal(seed, shape, scale=1.0):
    # numpy draws: no per-shape XLA compile (tests stay fast on a small CPU)
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    return jnp.asarray(x, dtype=jnp.float32)


def _t(x):
    return torch.tensor(np.asarray(x), dtype=torch.float32)


def _jgrad(f, argnums=0):
    return jax.jit(jax.grad(f, argnums=argnums))


def _close_grad(grad_fn, args, want, n, transcendentals=2):
    """``grad_fn(*args)`` against another evaluation order of it (its torch twin, the dense
    form, row by row): the ball around ``args`` of radius ``γ_n`` + ``transcendentals`` exp
    ulps (``n``: the longest reduction in the gradient, the vocabulary or embedding width)."""
    got = grad_fn(*args)
    tol.assert_ball_close(got, want, lambda a: grad_fn(*a), tuple(args), n, transcendentals,
                          "gradient")  # fmt: skip


# ---------------------------------------------------------------------------- ste_argmax


@pytest.mark.parametrize("shape", [(7, 13), (2, 5, 13), (13,)])
def test_ste_argmax_forward_is_exact_one_hot(shape):
    z = _normal(0, shape)
    y = ste_argmax(z)
    expected = np.eye(shape[-1], dtype=np.float32)[np.argmax(np.asarray(z), axis=-1)]
    assert y.shape == z.shape and y.dtype == z.dtype
    np.testing.assert_array_equal(np.asarray(y), expected)


def test_ste_argmax_keeps_dtype_and_breaks_ties_low():
    z = jnp.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=jnp.bfloat16)
    y = ste_argmax(z)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_ste_argmax_backward_is_identity():
    z = _normal(1, (6, 11))
    w = _normal(2, (6, 11))
    g = _jgrad(lambda z: jnp.sum(w * ste_argmax(z)))(z)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_ste_argmax_jit_and_vmap():
    z = _normal(3, (4, 5, 9))
    np.testing.assert_array_equal(jax.jit(ste_argmax)(z), ste_argmax(z))
    np.testing.assert_array_equal(jax.vmap(ste_argmax)(z), ste_argmax(z))


# ---------------------------------------------------------------------------- st_softmax


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_st_softmax_hard_forward_exact_and_gradient_of_softmax(tau):
    z = _normal(4, (5, 17), scale=2.0)
    w = _normal(5, (5, 17))
    y = st_softmax(z, tau)
    soft = jax.nn.softmax(z / tau, axis=-1)
    expected = np.eye(17, dtype=np.float32)[np.argmax(np.asarray(soft), axis=-1)]
    np.testing.assert_array_equal(np.asarray(y), expected)  # exactly 0/1, no 1 - s + s rounding
    g_ref = _jgrad(lambda z: jnp.sum(w * jax.nn.softmax(z / tau, axis=-1)))(z)
    _close_grad(_jgrad(lambda z: jnp.sum(w * st_softmax(z, tau))), (z,), g_ref, 17)


def test_st_softmax_soft_is_softmax():
    z = _normal(6, (3, 4, 10))
    tol.assert_within(
        st_softmax(z, 0.7, hard=False),
        jax.nn.softmax(z / 0.7, axis=-1),
        tol.softmax_bound(np.asarray(z, np.float64) / 0.7),
    )


def test_st_softmax_gradient_wrt_tau_matches_soft():
    z = _normal(7, (4, 9))
    w = _normal(8, (4, 9))
    g_ref = _jgrad(lambda t: jnp.sum(w * jax.nn.softmax(z / t, axis=-1)))(0.8)
    # dL/dτ sums over every entry of z: the longest reduction is all 36
    _close_grad(_jgrad(lambda t: jnp.sum(w * st_softmax(z, t))), (jnp.float32(0.8),), g_ref, 36)


def test_gumbel_noise_deterministic_by_key_and_absent_without_key():
    z = _normal(9, (6, 12))
    k1, k2 = jax.random.key(10), jax.random.key(11)
    a = st_softmax(z, 1.0, hard=False, key=k1, gumbel_scale=1.0)
    b = st_softmax(z, 1.0, hard=False, key=k1, gumbel_scale=1.0)
    c = st_softmax(z, 1.0, hard=False, key=k2, gumbel_scale=1.0)
    np.testing.assert_array_equal(a, b)
    # another key, other noise: the softmaxes differ by O(0.1), not by rounding
    noisy_c = np.asarray(z, np.float64) + np.asarray(gumbel_noise(k2, z.shape), np.float64)
    assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 100 * tol.softmax_bound(noisy_c)
    # the noise is exactly z + scale * gumbel_noise(key)
    manual = jax.nn.softmax(z + 1.0 * gumbel_noise(k1, z.shape), axis=-1)
    noisy = np.asarray(z, np.float64) + np.asarray(gumbel_noise(k1, z.shape), np.float64)
    tol.assert_within(a, manual, tol.softmax_bound(noisy))
    # no key -> no noise; a key with scale 0 -> no noise either
    clean = jax.nn.softmax(z, axis=-1)
    np.testing.assert_array_equal(st_softmax(z, hard=False), clean)
    np.testing.assert_array_equal(st_softmax(z, hard=False, key=k1, gumbel_scale=0.0), clean)


def test_st_softmax_under_jit_with_traced_tau_and_scale():
    z = _normal(12, (3, 8))
    key = jax.random.key(13)
    f = jax.jit(lambda z, t, s: st_softmax(z, t, True, key, s))
    np.testing.assert_array_equal(f(z, 0.5, 0.3), st_softmax(z, 0.5, True, key, 0.3))


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau_raises(tau):
    z = _normal(0, (2, 3))
    with pytest.raises(ValueError, match="tau"):
        st_softmax(z, tau)
    with pytest.raises(ValueError, match="tau"):
        st_softmax_embed(z, _normal(1, (3, 4)), tau)


def test_non_scalar_tau_raises():
    with pytest.raises(ValueError, match="tau must be a scalar"):
        st_softmax(_normal(0, (2, 3)), jnp.ones(2))


def test_bad_gumbel_settings_raise():
    z = _normal(0, (2, 3))
    with pytest.raises(ValueError, match="gumbel_scale must be finite and >= 0"):
        st_softmax(z, key=jax.random.key(0), gumbel_scale=-0.5)
    with pytest.raises(ValueError, match="needs a jax.random key"):
        st_softmax(z, gumbel_scale=1.0)


def test_bad_logits_raise():
    with pytest.raises(TypeError, match="floating-point"):
        ste_argmax(jnp.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="vocabulary axis"):
        st_softmax(jnp.float32(1.0))
    with pytest.raises(ValueError, match="empty vocabulary"):
        ste_argmax(jnp.zeros((3, 0)))


def test_bad_embed_raises():
    z = _normal(0, (4, 5))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        ste_argmax_embed(z, _normal(1, (6, 3)))
    with pytest.raises(ValueError, match=r"embedding table \[V, D\]"):
        st_softmax_embed(z, _normal(1, (5, 3, 2)))
    with pytest.raises(TypeError, match="floating"):
        ste_argmax_embed(z, jnp.ones((5, 3), jnp.int32))


# ---------------------------------------------------------------------------- gather embedding


def _dense_ste_embed(z, e):
    return ste_argmax(z) @ e


def _dense_st_embed(z, e, tau=1.0, key=None, scale=0.0):
    return st_softmax(z, tau, True, key, scale) @ e


@pytest.mark.parity
@pytest.mark.parametrize("shape", [(9, 5), (2, 7, 5), (40, 3)])  # (40, 3): repeated rows in dE
def test_ste_argmax_embed_equals_dense(shape):
    z = _normal(20, shape)
    e = _normal(21, (shape[-1], 6))
    w = _normal(22, shape[:-1] + (6,))
    # one-hot @ E adds exact zeros to one product: bit-identical to the gather
    np.testing.assert_array_equal(ste_argmax_embed(z, e), _dense_ste_embed(z, e))
    np.testing.assert_array_equal(ste_argmax_embed(z, e), e[jnp.argmax(z, -1)])  # exact gather
    loss = lambda f: lambda z, e: jnp.sum(w * jnp.tanh(f(z, e)))
    ours = _jgrad(loss(ste_argmax_embed), argnums=(0, 1))
    dz_ref, de_ref = _jgrad(loss(_dense_ste_embed), argnums=(0, 1))(z, e)
    n = max(shape[-1], 6, int(np.prod(shape[:-1])))  # dE sums over every row
    _close_grad(lambda z, e: ours(z, e)[0], (z, e), dz_ref, n)
    _close_grad(lambda z, e: ours(z, e)[1], (z, e), de_ref, n)


@pytest.mark.parametrize("tau,scale", [(1.0, 0.0), (0.5, 0.0), (0.7, 1.0)])
def test_st_softmax_embed_equals_dense(tau, scale):
    z = _normal(23, (2, 6, 11))
    e = _normal(24, (11, 4))
    w = _normal(25, (2, 6, 4))
    key = jax.random.key(26) if scale else None
    # the hard forward is an exact one-hot: the gather and one-hot @ E are bit-identical
    np.testing.assert_array_equal(
        st_softmax_embed(z, e, tau, key, scale), _dense_st_embed(z, e, tau, key, scale)
    )

    def loss(f):
        return lambda z, e, t: jnp.sum(w * jnp.sin(f(z, e, t, key, scale)))

    ours = _jgrad(loss(st_softmax_embed), argnums=(0, 1, 2))
    grads_ref = _jgrad(loss(_dense_st_embed), argnums=(0, 1, 2))(z, e, tau)
    args = (z, e, jnp.float32(tau))
    for i, g_ref in enumerate(grads_ref):  # dτ sums over all 132 entries of z
        _close_grad(lambda *a, i=i: ours(*a)[i], args, g_ref, z.size)


def test_embed_variants_returning_the_one_hot():
    z = _normal(27, (5, 9))
    e = _normal(28, (9, 3))
    wy = _normal(29, (5, 9))
    we = _normal(30, (5, 3))

    def ours(z):
        emb, y = st_softmax_embed(z, e, 0.6, return_y=True)
        emb2, oh = ste_argmax_embed(z, e, return_onehot=True)
        return jnp.sum(we * emb) + jnp.sum(wy * y) + jnp.sum(we * emb2) + jnp.sum(wy * oh)

    def dense(z):
        y = st_softmax(z, 0.6)
        oh = ste_argmax(z)
        return jnp.sum(we * (y @ e)) + jnp.sum(wy * y) + jnp.sum(we * (oh @ e)) + jnp.sum(wy * oh)

    # the forwards are the same values (exact one-hots and gathers) summed in maybe another
    # order: Higham's bound over every product of the four sums
    emb, oh = np.asarray(e, np.float64)[np.argmax(np.asarray(z), -1)], np.asarray(ste_argmax(z))
    terms = [np.asarray(we) * emb, np.asarray(wy) * oh] * 2
    tol.assert_within(ours(z), dense(z), tol.sum_bound(np.concatenate([t.ravel() for t in terms])))
    _close_grad(_jgrad(ours), (z,), _jgrad(dense)(z), 9)
    emb, y = st_softmax_embed(z, e, 0.6, return_y=True)
    np.testing.assert_array_equal(y, st_softmax(z, 0.6))


def test_embed_vmap_matches_rowwise():
    z = _normal(31, (3, 4, 7))
    e = _normal(32, (7, 5))
    f = lambda z: st_softmax_embed(z, e, 0.9)
    np.testing.assert_array_equal(jax.vmap(f)(z), jnp.stack([f(r) for r in z]))


def _hlo(f, *args):
    return jax.jit(f).lower(*args).as_text()


@pytest.mark.parametrize(
    "fwd",
    [ste_argmax_embed, lambda z, e: st_softmax_embed(z, e, 0.5)],
    ids=["ste_argmax_embed", "st_softmax_embed"],
)
def test_embed_forward_is_a_gather_not_a_matmul(fwd):
    z = _normal(33, (16, 64))  # [T, V]
    e = _normal(34, (64, 8))  # [V, D]
    text = _hlo(fwd, z, e)
    assert "gather" in text
    assert "dot_general" not in text and "stablehlo.dot " not in text
    # the backward does pay the [T, D] @ [D, V] matmul (and a scatter-add for dE)
    bwd = _hlo(_jgrad(lambda z, e: jnp.sum(fwd(z, e) ** 2), argnums=(0, 1)), z, e)
    assert "dot_general" in bwd and "scatter" in bwd
    # while the dense form has a matmul in its forward
    assert "dot_general" in _hlo(_dense_ste_embed, z, e)


# ---------------------------------------------------------------------------- torch parity


@pytest.mark.parity
def test_torch_parity_ste_argmax():
    z = _normal(40, (2, 6, 13))
    w = _normal(41, (2, 6, 13))
    zt = _t(z).requires_grad_(True)
    yt = torch_ste.ste_argmax(zt)
    (yt * _t(w)).sum().backward()
    np.testing.assert_array_equal(np.asarray(ste_argmax(z)), yt.detach().numpy())
    _close_grad(_jgrad(lambda z: jnp.sum(w * ste_argmax(z))), (z,), zt.grad.numpy(), 13)


@pytest.mark.parity
@pytest.mark.parametrize("tau,hard", [(1.0, True), (0.7, False)])
def test_torch_parity_st_softmax(tau, hard):
    z = _normal(42, (5, 19))
    w = _normal(43, (5, 19))
    zt = _t(z).requires_grad_(True)
    yt = torch_ste.st_softmax(zt, tau, hard)
    (yt * _t(w)).sum().backward()
    y = st_softmax(z, tau, hard)
    # soft: a softmax; hard: torch's y − s + s rounds inside the same bound
    tol.assert_within(y, yt.detach().numpy(), tol.softmax_bound(np.asarray(z, np.float64) / tau))
    _close_grad(_jgrad(lambda z: jnp.sum(w * st_softmax(z, tau, hard))), (z,), zt.grad.numpy(), 19)


# --------------------------------------------------------------------------- Gumbel noise

EULER_GAMMA = 0.5772156649015329


def _ks_gumbel(x) -> float:
    """Kolmogorov–Smirnov distance of samples ``x`` from the standard Gumbel CDF exp(-exp(-x))."""
    x = np.sort(np.asarray(x, np.float64))
    cdf = np.exp(-np.exp(-x))
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max()))


def test_gumbel_noise_is_standard_gumbel():
    """Moments and a KS test at a fixed seed: mean γ, variance π²/6, KS distance below the 0.1%
    critical value 1.95/√n; a shift by 0.05 (or an exponential) fails the same test."""
    n = 100_000
    x = np.asarray(gumbel_noise(jax.random.key(123), (n,)), np.float64)
    assert abs(x.mean() - EULER_GAMMA) < 4 * np.sqrt(np.pi**2 / 6 / n)
    # statistical, not rounding: the sample variance's sd is σ²·√((2 + 12/5)/n) ≈ 0.011 at
    # n = 1e5 (Gumbel excess kurtosis 12/5), so 0.05 is ~4.6 sd
    assert abs(x.var() - np.pi**2 / 6) < 0.05
    crit = 1.95 / np.sqrt(n)
    assert _ks_gumbel(x) < crit
    assert _ks_gumbel(x + 0.05) > 3 * crit
    assert _ks_gumbel(np.random.RandomState(0).exponential(size=n)) > 3 * crit
    # bfloat16 noise is finite too (no log(0))
    assert np.isfinite(np.asarray(gumbel_noise(jax.random.key(1), (n,), jnp.bfloat16))).all()


def test_twin_gumbel_noise_is_standard_gumbel():
    n = 100_000
    x = torch_ste.gumbel_noise((n,), torch.Generator().manual_seed(5)).numpy()
    assert _ks_gumbel(x) < 1.95 / np.sqrt(n)


def _draws(n, seed):
    return jax.random.split(jax.random.key(seed), n)


@pytest.mark.parametrize("tau,scale,hard", [(0.5, 0.8, True), (0.7, 1.5, False)])
def test_noisy_st_softmax_matches_twin_in_distribution(tau, scale, hard):
    """The JAX noise and the twin's own noise (drawn in torch) give the same mean output and mean
    gradient over 4000 draws, within 5 standard errors; the noise-free output is far from it."""
    n = 4000
    z = _normal(42, (3, 7), scale=0.7)
    w = _normal(43, (3, 7))
    f = lambda z, key: jnp.sum(w * st_softmax(z, tau, hard, key, scale))
    ys = jax.vmap(lambda k: st_softmax(z, tau, hard, k, scale))(_draws(n, 44))
    gs = jax.vmap(lambda k: jax.grad(f)(z, k))(_draws(n, 44))
    gen = torch.Generator().manual_seed(45)
    zt = _t(z).repeat(n, 1, 1).requires_grad_(True)  # one row per draw: per-draw gradients
    yt = torch_ste.st_softmax(zt, tau, hard, gumbel_scale=scale, generator=gen)
    (yt * _t(w)).sum().backward()
    for a, b in ((np.asarray(ys), yt.detach().numpy()), (np.asarray(gs), zt.grad.numpy())):
        # statistical, not rounding: 5 standard errors. The 1e-6 / 1e-4 floors serve entries
        # that barely vary over the draws (a hard one-hot that almost never flips: se ≈ 0),
        # where one flip in 4000 (2.5e-4 of a mean) is sampling, not a distribution difference
        se = np.sqrt(a.var(0) / n + b.var(0) / n) + 1e-6
        assert (np.abs(a.mean(0) - b.mean(0)) <= 5 * se + 1e-4).all()
    # Noise matters here: the mean output is ≥ 15 standard errors from the noise-free output.
    clean = np.asarray(st_softmax(z, tau, hard))
    se = np.sqrt(np.asarray(ys).var(0) / n) + 1e-6  # 1e-6: no 0 / 0 where a draw never varies
    assert (np.abs(np.asarray(ys).mean(0) - clean) / se).max() > 15


def test_gumbel_max_samples_the_softmax():
    """Gumbel-max: argmax(z + g) is a sample from softmax(z) (chi-square at a fixed seed); the
    hard straight-through output at tau 1 and scale 1 is that one-hot."""
    p = np.array([0.5, 0.25, 0.15, 0.1])
    z = jnp.log(jnp.asarray(p, jnp.float32))
    n = 20_000
    y = jax.vmap(lambda k: st_softmax(z, 1.0, True, k, 1.0))(_draws(n, 7))
    counts = np.asarray(y).sum(0)
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 16.3  # 0.1% critical value, 3 degrees of freedom
    wrong = np.array([0.25, 0.25, 0.25, 0.25])
    assert float(((counts - n * wrong) ** 2 / (n * wrong)).sum()) > 100


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["ste_argmax", "st_softmax"])
def test_torch_parity_embed(kind):
    z = _normal(45, (7, 23))
    e = _normal(46, (23, 6))
    w = _normal(47, (7, 6))
    zt, et = _t(z).requires_grad_(True), _t(e).requires_grad_(True)
    if kind == "ste_argmax":
        out_t = torch_ste.ste_argmax_embed(zt, et)
        f = ste_argmax_embed
    else:
        out_t = torch_ste.st_softmax_embed(zt, et, 0.6)
        f = lambda z, e: st_softmax_embed(z, e, 0.6)
    (torch.tanh(out_t) * _t(w)).sum().backward()
    # torch: (y − s + s) @ E, a V-term dot whose one-hot entries are off by a few u of 1:
    # reduction_bound over Σ_v|E[v, d]| with one exp ulp budget per term covers both
    e_abs = float(np.abs(np.asarray(e, np.float64)).sum(0).max())
    tol.assert_within(f(z, e), out_t.detach().numpy(), tol.reduction_bound(e_abs, 23, 1))
    grads = _jgrad(lambda z, e: jnp.sum(w * jnp.tanh(f(z, e))), argnums=(0, 1))
    _close_grad(lambda z, e: grads(z, e)[0], (z, e), zt.grad.numpy(), 23)
    _close_grad(lambda z, e: grads(z, e)[1], (z, e), et.grad.numpy(), 23)


@pytest.mark.parity
def test_embed_gradient_under_vmap_matches_rowwise():
    """refine_batch vmaps the gradient over prompts: the custom VJP must batch."""
    z = _normal(35, (3, 4, 7))  # [P, T, V]
    e = _normal(36, (7, 5))
    loss = lambda z, e: jnp.sum(jnp.tanh(st_softmax_embed(z, e, 0.8)) + ste_argmax_embed(z, e) ** 2)
    g = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))
    rows = [_jgrad(loss, argnums=(0, 1))(r, e) for r in z]
    _close_grad(lambda z, e: g(z, e)[0], (z, e), jnp.stack([r[0] for r in rows]), 12)
    _close_grad(lambda z, e: g(z, e)[1], (z, e), jnp.stack([r[1] for r in rows]), 12)
