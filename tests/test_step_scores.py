"""Step-score aggregation: each rule against its PyTorch twin (fp32), masked slots ignored,
empty rows, the soft minimum's limits and gradient, a run-time temperature under jit, and the
errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nabla_jax.functional.step_scores import AGGREGATIONS, aggregate_steps, soft_min_steps
from tests import tolerances as tol
from tests.reference import torch_step_scores as ref

B, S = 4, 6


@pytest.fixture(scope="module")
def batch():
    rng = np.random.RandomState(0)
    scores = rng.uniform(0.05, 1.0, size=(B, S)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * S])
    # Masked slots hold extreme values: an aggregation that reads them is wrong by far.
    scores = np.where(mask > 0, scores, np.float32(-50.0))
    return scores, mask


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_matches_torch_twin(batch, how):
    scores, mask = batch
    t = 0.3 if how == "soft_min" else None
    got = aggregate_steps(scores, mask, how, temperature=t, empty=-1.0)
    want = ref.aggregate(torch.from_numpy(scores), torch.from_numpy(mask), how, t, -1.0)
    # An S-term reduction (sum, product, log-sum-exp) in another order: gamma(S) of the terms'
    # magnitudes, with one exp and one log per term for the soft minimum.
    terms = np.abs(scores * mask).sum(1).max() + (abs(np.log(S)) if t else 0.0)
    bound = tol.reduction_bound(max(terms, 1.0), S, transcendentals=2 if t else 0)
    tol.assert_within(got, want.numpy(), bound, how)
    assert float(got[3]) == -1.0  # no real step


def test_known_values():
    s = jnp.array([[0.9, 0.5, 0.8]])
    m = jnp.ones((1, 3))
    assert float(aggregate_steps(s, m, "last")[0]) == pytest.approx(0.8)
    assert float(aggregate_steps(s, m, "min")[0]) == pytest.approx(0.5)
    assert float(aggregate_steps(s, m, "product")[0]) == pytest.approx(0.36)
    assert float(aggregate_steps(s, m, "mean")[0]) == pytest.approx(2.2 / 3)


def test_soft_min_limits_and_gradient(batch):
    scores, mask = batch
    hard_min = aggregate_steps(scores, mask, "min")[:3]
    mean = aggregate_steps(scores, mask, "mean")[:3]
    n = mask.sum(1)[:3]
    for t in (1e-3, 0.1, 1.0, 10.0):
        soft = soft_min_steps(scores, mask, t)[:3]
        assert np.all(soft >= hard_min - 1e-6) and np.all(soft <= mean + 1e-6)
        if t == 1e-3:
            assert np.all(soft - hard_min <= t * np.log(n) + 1e-6)
    assert np.allclose(soft_min_steps(scores, mask, 1e4)[:3], mean, atol=1e-4)
    grad = jax.grad(lambda s: soft_min_steps(s, mask, 0.2).sum())(jnp.asarray(scores))
    for b in range(B):
        keep = mask[b] > 0
        if keep.any():  # Boltzmann weights of the real steps, summing to one
            w = jax.nn.softmax(-scores[b][keep] / 0.2)
            np.testing.assert_allclose(grad[b][keep], w, rtol=1e-5, atol=1e-7)
        assert np.all(grad[b][~keep] == 0.0)


def test_temperature_is_a_run_time_value(batch):
    scores, mask = batch
    f = jax.jit(lambda s, t: soft_min_steps(s, mask, t))
    a, b = f(scores, jnp.float32(0.1)), f(scores, jnp.float32(2.0))
    assert f._cache_size() == 1  # one program for both temperatures
    np.testing.assert_allclose(a, soft_min_steps(scores, mask, 0.1), rtol=1e-6)
    assert not np.allclose(a[:3], b[:3])


def test_errors(batch):
    scores, mask = batch
    with pytest.raises(ValueError, match="one of last, min, product, mean, soft_min, got 'max'"):
        aggregate_steps(scores, mask, "max")
    with pytest.raises(ValueError, match="soft_min needs a temperature"):
        aggregate_steps(scores, mask, "soft_min")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0.0"):
        aggregate_steps(scores, mask, "soft_min", temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be a scalar"):
        soft_min_steps(scores, mask, jnp.ones(2))
    with pytest.raises(ValueError, match="applies to the soft_min aggregation only"):
        aggregate_steps(scores, mask, "min", temperature=0.1)
    with pytest.raises(ValueError, match=r"both be \[B, S\]"):
        aggregate_steps(scores, mask[:, :3], "mean")
