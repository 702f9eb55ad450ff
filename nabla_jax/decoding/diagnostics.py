"""What DTO did at each refinement: the resample distribution before and after the gradient.

At the selected position the loop holds two logit vectors ``[B, V]``: the rollout's own
(``original``) and DTO's (``refined``). The resample draws from the refined one at the resample
temperature (``τ``; 1 when the resample is greedy), without the current token when
``resample_excludes_current``. :func:`diagnose` compares the two distributions:

* ``kl`` — KL(refined ‖ original) in nats;
* ``dlogp`` — the change in log-probability of the token finally proposed, and that token's
  probability before and after DTO (``p_new_before`` / ``p_new_after``);
* ``top1_changed`` / ``topk_changed`` — whether DTO changed the argmax, or the set of the
  :data:`TOP_K` most probable tokens;
* with a next-token oracle (a host function that names the right next token of a response
  prefix, or −1 where it cannot): the probability of the right token before and after DTO,
  and whether it was already the most probable one before (``right_top1_before``).

Without DTO (``use_dto=False``) the two distributions are the same: every figure is 0 / False.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.decoding.config import DecodeHyper, DecodeProgram

__all__ = ["TOP_K", "Diagnosis", "NextTokenOracle", "diagnose", "oracle_tokens"]

#: Size of the top-k set whose change :func:`diagnose` reports.
TOP_K = 8

#: ``oracle(prompt_ids, response_ids) -> right next token id, or -1``: the LM ids of a row's
#: prompt (unpadded) and of its response before the selected position.
NextTokenOracle = Callable[[Sequence[int], Sequence[int]], int]


class Diagnosis(NamedTuple):
    """Per row ``[B]``: see the module doc (``right`` is −1 without an oracle answer)."""

    kl: jax.Array
    dlogp: jax.Array
    top1_changed: jax.Array
    topk_changed: jax.Array
    right: jax.Array
    p_right_before: jax.Array
    p_right_after: jax.Array
    right_top1_before: jax.Array
    p_new_before: jax.Array
    p_new_after: jax.Array
    fidelity: jax.Array | None = None  # [B] Spearman (nabla_jax.decoding.fidelity) or None


def _resample_logp(logits, current, h: DecodeHyper, prog: DecodeProgram):
    """Log-probabilities ``[B, V]`` of the resample distribution (temperature only)."""
    tau = 1.0 if prog.resample.greedy else h.resample.temperature
    z = logits.astype(jnp.float32) / tau
    if prog.resample_excludes_current:
        v = jnp.arange(z.shape[-1])[None, :]
        z = jnp.where(v == current[:, None], -jnp.inf, z)
    return jax.nn.log_softmax(z, axis=-1)


def _top_set(logp, k: int):
    """Sorted indices ``[B, k]`` of the ``k`` largest entries."""
    return jnp.sort(jax.lax.top_k(logp, k)[1], axis=-1)


def diagnose(original, refined, current, proposed, right, h: DecodeHyper, *,
             prog: DecodeProgram) -> Diagnosis:  # fmt: skip
    """Compare the resample distributions of ``original`` and ``refined`` logits ``[B, V]``.

    ``current``, ``proposed``: ``[B]`` the token at the position and the one proposed;
    ``right``: ``[B]`` the oracle's right token, or −1.
    """
    lp_o = _resample_logp(original, current, h, prog)
    lp_r = _resample_logp(refined, current, h, prog)
    p_r = jnp.exp(lp_r)
    kl = jnp.sum(jnp.where(p_r > 0, p_r * (lp_r - lp_o), 0.0), axis=-1)
    kl = jnp.maximum(kl, 0.0)  # KL ≥ 0; rounding can put a near-zero sum a few ulps below
    rows = jnp.arange(original.shape[0])
    dlogp = lp_r[rows, proposed] - lp_o[rows, proposed]
    k = min(TOP_K, original.shape[-1])
    top1 = jnp.argmax(lp_r, axis=-1) != jnp.argmax(lp_o, axis=-1)
    topk = jnp.any(_top_set(lp_r, k) != _top_set(lp_o, k), axis=-1)
    at = jnp.clip(right, 0, original.shape[-1] - 1)
    known = right >= 0
    before = jnp.where(known, jnp.exp(lp_o[rows, at]), 0.0)
    after = jnp.where(known, jnp.exp(lp_r[rows, at]), 0.0)
    right_top1 = known & (jnp.argmax(lp_o, axis=-1) == at)
    return Diagnosis(kl, jnp.where(jnp.isfinite(dlogp), dlogp, 0.0), top1, topk, right,
                     before, after, right_top1, jnp.exp(lp_o[rows, proposed]),
                     jnp.exp(lp_r[rows, proposed]))  # fmt: skip


def oracle_tokens(oracle: NextTokenOracle | None, prompt_ids, prompt_mask, tokens, at, rows):
    """``[B]`` int32 the oracle's right token at response position ``at [B]`` of the rows in
    ``rows [B]`` (−1 elsewhere, and everywhere without an oracle); runs on the host."""
    if oracle is None:
        return jnp.full(at.shape, -1, jnp.int32)

    def host(prompt_ids, prompt_mask, tokens, at, rows):
        out = np.full(len(at), -1, np.int32)
        for b in np.flatnonzero(np.asarray(rows)):
            prompt = np.asarray(prompt_ids[b])[np.asarray(prompt_mask[b]) > 0].tolist()
            out[b] = int(oracle(prompt, np.asarray(tokens[b])[: int(at[b])].tolist()))
        return out

    shape = jax.ShapeDtypeStruct(at.shape, jnp.int32)
    return jax.pure_callback(host, shape, prompt_ids, prompt_mask, tokens, at, rows,
                             vmap_method="sequential")  # fmt: skip
