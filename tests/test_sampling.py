"""Sampling filters: parity with the PyTorch reference, greedy, determinism, frequencies, errors."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nabla_jax.decoding import (
    SamplingConfig,
    apply_temperature,
    filter_logits,
    sample_token,
    top_k_filter,
    top_p_filter,
)
from tests import tolerances as tol
from tests.reference import torch_sampling as ref

TEMPERATURES = (0.0, 0.5, 1.0, 1.7)
TOP_KS = (0, 1, 3, 17, 40, 45)  # 40 = V, 45 > V
TOP_PS = (1.0, 0.95, 0.5, 0.1, 1e-6)
V = 40


def _probs_jax(logits, t, k, p):
    return np.asarray(jax.nn.softmax(filter_logits(jnp.asarray(logits), t, k, p), axis=-1))


def _probs_torch(logits, t, k, p):
    return ref.filter_logits(torch.from_numpy(logits), t, k, p).softmax(dim=-1).numpy()


def _bound(logits, t, k, p):
    """Two evaluations of softmax(filtered logits / t): the filter only selects and scales (its
    kept set is compared exactly), so the softmax's own bound on the filtered logits."""
    filtered = ref.filter_logits(torch.from_numpy(logits).double(), t, k, p).numpy()
    return tol.softmax_bound(filtered)


def _random_logits(seed, shape=(3, 5, V), scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _tied_logits():
    """Rows with heavy ties: few distinct values, a fully uniform row, a tied maximum."""
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 4, size=(4, V)).astype(np.float32)
    rows[1] = 0.0  # uniform
    rows[2, :3] = 10.0  # three-way tie for the top
    rows[3] = np.repeat(np.arange(V // 4, dtype=np.float32), 4)  # groups of 4 equal values
    return rows


@pytest.fixture(scope="module")
def jit_filter():
    return jax.jit(filter_logits)


@pytest.mark.parity
@pytest.mark.parametrize("logits_kind", ["random", "ties"])
def test_filter_parity_grid(logits_kind, jit_filter):
    logits = _random_logits(0) if logits_kind == "random" else _tied_logits()
    for t, k, p in itertools.product(TEMPERATURES, TOP_KS, TOP_PS):
        want = _probs_torch(logits, t, k, p)
        # Traced parameters: one compiled program for the whole grid.
        got = np.asarray(
            jax.nn.softmax(jit_filter(logits, jnp.float32(t), jnp.int32(k), jnp.float32(p)), -1)
        )
        tol.assert_within(got, want, _bound(logits, t, k, p), f"t={t} k={k} p={p}")
        # The kept set must agree exactly, not just the probabilities.
        np.testing.assert_array_equal(got > 0, want > 0, err_msg=f"support t={t} k={k} p={p}")


@pytest.mark.parity
def test_eager_equals_jit_and_python_params(jit_filter):
    logits = _random_logits(1)
    eager = _probs_jax(logits, 0.7, 5, 0.9)
    jitted = np.asarray(jax.nn.softmax(jit_filter(logits, 0.7, 5, 0.9), -1))
    # op by op against fused: the same softmax, maybe in another order
    tol.assert_within(eager, jitted, _bound(logits, 0.7, 5, 0.9))


@pytest.mark.parity
def test_per_row_parameters_match_rowwise():
    logits = _random_logits(2, shape=(3, V))
    ts, ks, ps = np.array([0.0, 0.8, 1.3]), np.array([0, 4, 12]), np.array([0.9, 1.0, 0.3])
    got = np.asarray(jax.nn.softmax(filter_logits(logits, ts, ks, ps), -1))
    for i in range(3):
        want = _probs_torch(logits[i : i + 1], float(ts[i]), int(ks[i]), float(ps[i]))[0]
        tol.assert_within(got[i], want, _bound(logits[i : i + 1], ts[i], int(ks[i]), ps[i]))


def test_top_p_semantics_by_hand():
    probs = np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32)
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p))).tolist()
    assert kept(0.5) == [True, False, False, False]  # cum before: 0, .5, .8, .95
    assert kept(0.51) == [True, True, False, False]  # the crossing token is kept
    assert kept(0.9) == [True, True, True, False]
    assert kept(1e-9) == [True, False, False, False]  # top-1 always kept
    assert kept(1.0) == [True] * 4


def test_top_k_keeps_ties_and_off():
    logits = jnp.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert np.isfinite(np.asarray(top_k_filter(logits, 1))).tolist() == [0, 1, 1, 0, 1]
    assert np.isfinite(np.asarray(top_k_filter(logits, 2))).tolist() == [0, 1, 1, 0, 1]
    assert np.isfinite(np.asarray(top_k_filter(logits, 4))).tolist() == [0, 1, 1, 1, 1]
    assert np.isfinite(np.asarray(top_k_filter(logits, 9))).tolist() == [1, 1, 1, 1, 1]
    np.testing.assert_array_equal(top_k_filter(logits, 0), logits)


def test_temperature_zero_is_one_hot_at_first_argmax():
    logits = jnp.array([[0.0, 5.0, 5.0, 1.0]])
    out = np.asarray(apply_temperature(logits, 0.0))
    assert np.isfinite(out).tolist() == [[False, True, False, False]]
    np.testing.assert_array_equal(apply_temperature(logits, 2.0), logits / 2.0)  # exact: / 2


def test_greedy_equals_argmax():
    logits = _random_logits(3, shape=(64, V))
    key = jax.random.key(0)
    got = sample_token(key, logits, temperature=0.0, top_k=5, top_p=0.3)
    assert got.dtype == jnp.int32 and got.shape == (64,)
    np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
    # Traced temperature 0 under jit takes the same path.
    jitted = jax.jit(sample_token)(key, logits, jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    np.testing.assert_array_equal(jitted, np.argmax(logits, axis=-1))
    # Per-row temperature: rows with temperature 0 are greedy, the others sample.
    temps = jnp.where(jnp.arange(64) % 2 == 0, 0.0, 1.0)
    mixed = np.asarray(sample_token(key, logits, temps, 0, 1.0))
    np.testing.assert_array_equal(mixed[::2], np.argmax(logits[::2], axis=-1))


def test_same_key_same_token_and_keys_differ():
    logits = _random_logits(4, shape=(256, V), scale=0.5)
    a = sample_token(jax.random.key(11), logits, 1.0, 0, 0.95)
    b = sample_token(jax.random.key(11), logits, 1.0, 0, 0.95)
    c = sample_token(jax.random.key(12), logits, 1.0, 0, 0.95)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_samples_only_kept_tokens():
    logits = _random_logits(5, shape=(512, V))
    toks = np.asarray(sample_token(jax.random.key(3), logits, 1.0, 3, 1.0))
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    assert all(toks[i] in top3[i] for i in range(len(toks)))


def test_empirical_frequencies_match_filtered_distribution():
    logits = _random_logits(6, shape=(12,), scale=1.0)
    t, k, p = 0.8, 8, 0.9
    want = _probs_torch(logits[None], t, k, p)[0]
    n = 200_000
    keys = jax.random.split(jax.random.key(2024), n)
    draws = jax.jit(jax.vmap(lambda kk: sample_token(kk, logits, t, k, p)))(keys)
    freq = np.bincount(np.asarray(draws), minlength=logits.shape[0]) / n
    # Binomial std <= sqrt(0.25 / n) ~ 1.1e-3; allow ~6 sigma. Fixed key: cannot flake.
    np.testing.assert_allclose(freq, want, atol=7e-3)
    assert np.all(freq[want == 0] == 0)


def test_sampling_config_validates_and_delegates():
    cfg = SamplingConfig(temperature=0.6, top_k=0, top_p=0.95)
    assert hash(cfg) == hash(SamplingConfig(0.6, 0, 0.95))
    logits = _random_logits(8, shape=(2, V))
    np.testing.assert_array_equal(cfg.filter(logits), filter_logits(logits, 0.6, 0, 0.95))
    key = jax.random.key(5)
    np.testing.assert_array_equal(cfg.sample(key, logits), sample_token(key, logits, 0.6, 0, 0.95))
    assert SamplingConfig(temperature=0).greedy and not cfg.greedy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
    ],
)
def test_sampling_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_function_argument_errors():
    logits = jnp.zeros((2, 5))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        filter_logits(logits, -1.0)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        top_k_filter(logits, -2)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        top_k_filter(logits, 2.5)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        top_p_filter(logits, 0.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sample_token(jax.random.key(0), logits, 1.0, 0, 2.0)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., V\]"):
        filter_logits(jnp.zeros(()), 1.0)
    with pytest.raises(TypeError, match="floating point"):
        filter_logits(jnp.zeros((2, 5), jnp.int32), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        filter_logits(logits, jnp.ones((3,)))
