"""Exploration options of the ∇-Reasoner loop (``DecodeConfig`` fields, off by default):
where to refine, how far a DTO step moves, and how a selected position proposes.

* :func:`rank_threshold` — the gradient probe's threshold scaled to the model: the ``k``-th
  largest norm of a window (``grad_top_k``) or a quantile of them (``grad_quantile``);
* :func:`gap_learning_rate` — DTO steps sized to the logits they move (``dto_lr_gap``);
* :func:`resample_tokens` — resampling that can leave out the current token
  (``resample_excludes_current``), so a selected position always proposes;
* :func:`resample_several` — several positions of one refined window per iteration
  (``positions_per_iteration``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nabla_jax.decoding.config import DecodeConfig, DecodeHyper
from nabla_jax.decoding.indexing import take_at
from nabla_jax.decoding.sampling import sample_token
from nabla_jax.functional.optimizer import paper_optimizer

__all__ = [
    "gap_learning_rate",
    "rank_threshold",
    "resample_several",
    "resample_tokens",
    "row_scaled_optimizer",
    "window_store",
]


def rank_threshold(norms, valid, h: DecodeHyper, prog: DecodeConfig):
    """Per-row threshold ``[B, 1]`` of the probe's rank rule: the ``r``-th largest gradient norm
    among the ``valid`` positions of ``norms [B, K]`` (``r`` = ``grad_top_k``, or the share
    ``1 - grad_quantile`` of the valid count, rounded up; at least 1)."""
    desc = -jnp.sort(-jnp.where(valid, norms, -jnp.inf), axis=-1)
    count = jnp.sum(valid, axis=-1)
    if prog.grad_rank == "top_k":
        r = jnp.minimum(h.grad_top_k, count)
    else:
        r = jnp.ceil((1.0 - h.grad_quantile) * count).astype(jnp.int32)
    r = jnp.clip(r - 1, 0, norms.shape[1] - 1)
    return jnp.take_along_axis(desc, r[:, None], axis=1)


def window_store(lm, resp, at, width: int, latents: bool):
    """Unrefined logits ``[B, width, V]`` float32 of the rollout ``resp`` at positions
    ``at .. at + width - 1`` (clipped to the buffer; latents mode applies the LM head)."""
    store = resp.hidden if latents else resp.logits
    if width == 1:
        first = take_at(store, at)
        return (lm.head_logits(first) if latents else first).astype(jnp.float32)[:, None]
    rows = jnp.stack([take_at(store, at + j) for j in range(width)], axis=1)
    return (lm.head_logits(rows) if latents else rows).astype(jnp.float32)


def gap_learning_rate(logits, h: DecodeHyper, prog: DecodeConfig):
    """Per-row DTO learning rate ``[B]`` sized to the top-1/top-2 gap of the selected
    position's ``logits [B, V]``: ``dto_lr_gap × gap / num_steps`` (floored at 1e-6). Adam moves
    a logit by about the learning rate per step, so the steps together can close the gap."""
    top2 = jax.lax.top_k(logits, 2)[0]
    lr = h.dto_lr_gap * (top2[:, 0] - top2[:, 1]) / prog.dto.num_steps
    return jnp.maximum(lr, 1e-6)


def row_scaled_optimizer(prog: DecodeConfig, h: DecodeHyper, lr_rows):
    """The paper's DTO optimizer (schedule, Adam) with row ``b``'s updates scaled so that its
    peak learning rate is ``lr_rows[b]`` instead of ``h.dto.learning_rate``; ``lr_rows [B]``."""
    ratio = (lr_rows / h.dto.learning_rate)[:, None, None]

    def scale(updates, params=None):
        del params
        return jax.tree.map(lambda u: u * ratio.astype(u.dtype), updates)

    return optax.chain(paper_optimizer(prog.dto, h.dto), optax.stateless(scale))


def resample_tokens(keys, logits, current, h: DecodeHyper, prog: DecodeConfig):
    """One token ``[B]`` drawn from ``logits [B, V]`` with the resample settings (``keys [B]``);
    with ``resample_excludes_current`` the ``current [B]`` token is left out, so the draw always
    differs from it."""
    r = h.resample
    if prog.resample_excludes_current:
        v = jnp.arange(logits.shape[-1])[None, :]
        logits = jnp.where(v == current[:, None], -jnp.inf, logits)
    return jax.vmap(lambda k, z: sample_token(k, z, r.temperature, r.top_k, r.top_p))(keys, logits)


def resample_several(keys, window_logits, tokens, at, qualified, h: DecodeHyper, prog):
    """The first ``positions_per_iteration`` qualifying positions in ``[at, at + K)`` (``at``
    always among them), each resampled from its refined logits.

    ``window_logits [B, K, V]``, ``tokens [B, L]``, ``at [B]``, ``qualified [B, L]``. Returns
    ``(picked [B, L] bool, tokens [B, L])``: the picked positions and the response with each
    picked position's draw in place.
    """
    b, n = tokens.shape
    k = window_logits.shape[1]
    slots = jnp.arange(n)[None, :]
    inside = (slots >= at[:, None]) & (slots < at[:, None] + k)
    cand = (qualified & inside) | (slots == at[:, None])
    picked = cand & (jnp.cumsum(cand, axis=-1) <= prog.positions_per_iteration)
    offsets = jnp.clip(at[:, None] + jnp.arange(k)[None, :], 0, n - 1)
    current = jnp.take_along_axis(tokens, offsets, axis=1)  # [B, K]
    sub = jax.vmap(lambda key: jax.random.split(key, k))(keys)  # [B, K]
    flat = resample_tokens(
        sub.reshape(-1), window_logits.reshape(b * k, -1), current.reshape(-1), h, prog
    ).reshape(b, k)
    drawn = jnp.take_along_axis(flat, jnp.clip(slots - at[:, None], 0, k - 1), axis=1)
    return picked, jnp.where(picked, drawn, tokens).astype(tokens.dtype)
