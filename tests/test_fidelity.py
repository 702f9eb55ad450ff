"""First-order fidelity of the RM gradient (nabla_jax.decoding.fidelity) against its PyTorch
twin, and the option in a decode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import nabla_jax as nj
from nabla_jax.decoding.fidelity import first_order_fidelity, spearman
from nabla_jax.decoding.pair import ModelPair
from nabla_jax.decoding.scoring import RMFrame
from nabla_jax.decoding.stopping import stop_tables
from tests import tolerances as tol
from tests.hf_models import saved_qwen2_pair
from tests.reference import torch_fidelity as ref


@pytest.mark.parity
def test_spearman_matches_scipy():
    rng = np.random.RandomState(0)
    x, y = rng.randn(5, 16), rng.randn(5, 16)
    y[1] = x[1] * 3 + 1  # perfectly monotone
    y[2] = -x[2]
    got = np.asarray(spearman(jnp.asarray(x), jnp.asarray(y)))
    want = [scipy.stats.spearmanr(a, b).statistic for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # ranks are exact; 1e-6 = the
    # float32 rounding of a ratio of integer sums below 16³
    assert got[1] == pytest.approx(1.0) and got[2] == pytest.approx(-1.0)
    assert np.isnan(np.asarray(spearman(jnp.ones((1, 4)), jnp.arange(4.0)[None])))[0]


@pytest.mark.parity
def test_fidelity_matches_torch_twin(tmp_path):
    _, rm_t, lm, rm = saved_qwen2_pair(tmp_path)
    v = lm.config.vocab_size
    rng = np.random.RandomState(3)
    prefix = rng.randint(3, v, (2, 4))
    suffix = rng.randint(3, v, (2, 2))
    tokens = rng.randint(3, v, (2, 6))
    length = np.array([6, 5])
    at = np.array([2, 4])
    logits = rng.randn(2, v).astype(np.float32)
    k = 6
    frame = RMFrame(jnp.asarray(prefix), jnp.ones((2, 4), jnp.int32), jnp.asarray(suffix),
                    jnp.ones((2, 2), jnp.int32))  # fmt: skip
    tables = stop_tables((0,), [])

    def run(rm_):
        pair = ModelPair(lm, rm_, rm_.embed_matrix())
        out = first_order_fidelity(pair, frame, jnp.asarray(tokens), jnp.asarray(length),
                                   jnp.asarray(at), jnp.asarray(logits), tables, k)  # fmt: skip
        return out[1], out[2]

    rho, linear, actual, cand = first_order_fidelity(
        ModelPair(lm, rm, rm.embed_matrix()), frame, jnp.asarray(tokens), jnp.asarray(length),
        jnp.asarray(at), jnp.asarray(logits), tables, k,
    )  # fmt: skip
    # Another implementation of the same model: the RM's own sensitivity inside float32's
    # backward-error ball of its longest contraction (tests/tolerances.py).
    rel = tol.gamma(tol.longest_contraction(rm))
    b_lin, b_act = tol.ball_tolerance(run, rm, rel, (rm.config.hidden_size, rm.config.hidden_size))
    for b in range(2):
        resp = tokens[b, : length[b]].tolist()
        want_rho, want_lin, want_act = ref.fidelity(
            rm_t, prefix[b].tolist(), resp, suffix[b].tolist(), int(at[b]), np.asarray(cand[b])
        )
        tol.assert_within(linear[b], want_lin, b_lin, f"linear estimates, row {b}")
        tol.assert_within(actual[b], want_act, b_act, f"actual changes, row {b}")
        gaps = np.diff(np.sort(want_act))
        if gaps.min() > 2 * np.max(b_act) and np.diff(np.sort(want_lin)).min() > 2 * np.max(
            b_lin
        ):  # no near-tie that rounding may flip: the ranks, hence rho, agree exactly
            assert float(rho[b]) == pytest.approx(want_rho, abs=1e-6)


def test_decode_records_fidelity_only_when_asked(tmp_path):
    from tests.tiny_decode import PROMPTS, TINY_DECODE, load_chat_pair

    class Factory:
        def mktemp(self, name):
            d = tmp_path / name
            d.mkdir()
            return d

    lm, rm = load_chat_pair(Factory())
    key = jax.random.key(0)
    off = nj.NablaDecoder(lm, rm, TINY_DECODE).generate(PROMPTS, key)
    import dataclasses

    on_cfg = dataclasses.replace(TINY_DECODE, fidelity_top_k=4)
    on = nj.NablaDecoder(lm, rm, on_cfg).generate(PROMPTS, key)
    assert all(t["fidelity"] is None for r in off for t in r.trace)
    measured = [t["fidelity"] for r in on for t in r.trace if t["fidelity"] is not None]
    assert measured and all(-1.0 <= x <= 1.0 for x in measured)
    assert [r.token_ids for r in on] == [r.token_ids for r in off]  # only observes
    assert [r.stats for r in on] == [r.stats for r in off]
    with pytest.raises(ValueError, match="fidelity_top_k"):
        dataclasses.replace(TINY_DECODE, fidelity_top_k=1)
