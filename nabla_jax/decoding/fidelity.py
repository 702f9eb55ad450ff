"""First-order fidelity of the reward model's gradient: does ``∇ₑr`` predict what a swap does?

DTO moves the selected position along the reward model's gradient with respect to the input
embedding there. That is informative only if the gradient's linear estimate of the reward change
for swapping token ``v`` in, ``∇ₑr · (E[v] − E[cur])``, orders the candidates as re-scoring the
swapped responses does. :func:`first_order_fidelity` measures exactly that at each refinement,
for the ``k`` most probable tokens of the refined distribution: the Spearman rank correlation of
the linear estimates with the actual changes (one gradient of the current response and ``k``
re-scored responses per row, in one batched program). It is a diagnostic: its model calls are
not counted, and it is off unless ``DecodeConfig.fidelity_top_k`` is set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nabla_jax.decoding.scoring import response_inputs
from nabla_jax.functional.step_reward import response_reward
from nabla_jax.models.model import default_positions

__all__ = ["first_order_fidelity", "spearman"]


def spearman(x, y):
    """Spearman rank correlation ``[B]`` of ``x``, ``y`` ``[B, k]`` (ordinal ranks; NaN when
    either row is constant)."""
    rank = lambda a: jnp.argsort(jnp.argsort(a, axis=-1), axis=-1).astype(jnp.float32)
    rx, ry = rank(x), rank(y)
    rx = rx - jnp.mean(rx, axis=-1, keepdims=True)
    ry = ry - jnp.mean(ry, axis=-1, keepdims=True)
    den = jnp.sqrt(jnp.sum(rx * rx, axis=-1) * jnp.sum(ry * ry, axis=-1))
    const = (jnp.ptp(x, axis=-1) == 0) | (jnp.ptp(y, axis=-1) == 0)
    rho = jnp.clip(jnp.sum(rx * ry, axis=-1) / jnp.maximum(den, 1e-30), -1.0, 1.0)  # rounding
    return jnp.where(const, jnp.nan, rho)


def _scores_of_embeds(rm, embeds, ids, mask, start):
    """RM scores ``[N]`` of input embeddings ``[N, T, D]`` (of ids ``[N, T]``) under ``mask
    [N, T]``, the response from slot ``start``."""
    hidden = rm.forward(
        inputs_embeds=embeds, attention_mask=mask, position_ids=default_positions(mask)
    ).hidden
    return response_reward(rm, hidden, ids, mask, start)


def first_order_fidelity(models, frame, tokens, length, at, logits, tables, k: int):
    """Per row ``[B]``: Spearman(linear estimate, actual reward change) over the top-``k``
    candidates of ``logits [B, V]`` for the token at response position ``at [B]`` of the
    responses ``tokens [B, L]`` of ``length [B]`` (framed by the RM template ``frame``).

    ``models``: a :class:`~nabla_jax.decoding.pair.ModelPair` (its ``rm_table`` gives the RM
    embedding of an LM id, its ``rm_ids`` the RM id). Returns ``(rho [B], linear [B, k],
    actual [B, k], candidates [B, k])``.
    """
    rm, table = models.rm, models.rm_table
    ids, mask = response_inputs(frame, tokens, length, tables, models.rm_ids)
    b, t = ids.shape
    slot = frame.prefix_ids.shape[1] + at  # the position's slot in the RM input
    embeds = rm.embed(ids).astype(jnp.float32)
    start = frame.prefix_ids.shape[1]
    base, grads = jax.value_and_grad(lambda e: jnp.sum(_scores_of_embeds(rm, e, ids, mask, start)))(
        embeds
    )
    del base
    rows = jnp.arange(b)
    g = grads[rows, slot]  # [B, D]: ∇ₑr at the position
    cand = jax.lax.top_k(logits, k)[1]  # [B, k] LM ids
    cur = tokens[rows, at]
    e_cand = table[cand].astype(jnp.float32)  # [B, k, D]
    e_cur = table[cur].astype(jnp.float32)[:, None]
    linear = jnp.einsum("bd,bkd->bk", g, e_cand - e_cur)
    rm_cand = cand if models.rm_ids is None else models.rm_ids[cand]
    swapped = (
        jnp.repeat(ids[:, None], k, axis=1)
        .at[rows[:, None], jnp.arange(k)[None], slot[:, None]]
        .set(rm_cand)
    )
    flat_mask = jnp.repeat(mask[:, None], k, axis=1).reshape(b * k, t)
    flat_ids = swapped.reshape(b * k, t)
    actual_all = _scores_of_embeds(rm, rm.embed(flat_ids).astype(jnp.float32), flat_ids,
                                   flat_mask, start).reshape(b, k)  # fmt: skip
    current = _scores_of_embeds(rm, embeds, ids, mask, start)
    actual = actual_all - current[:, None]
    return spearman(linear, actual), linear, actual, cand
