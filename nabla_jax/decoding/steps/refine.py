"""Step 2 — refine: DTO on the window from each selected position.

The window's logits (or latents) are optimized by :func:`~nabla_jax.functional.refine_rows`
against the reward model and the LM's own likelihood, in one of a few fixed window shapes (the
largest ``DecodeConfig.dto_window_shapes`` of :func:`window_buckets`; ``lax.switch`` picks the
smallest that fits every row's rest; skipped when no row selected a position). Without DTO (the
ablation) the rollout's own logits are returned. With ``dto_lr_gap`` each row's learning rate
is sized to the selected logit's top-1/top-2 gap. With ``dto_rows`` the rows that selected a
position are gathered into sub-batches of that many rows (one DTO pass each, a ``fori_loop`` as
long as the selected rows need) and the results scattered back: every row follows its own DTO
trajectory (its own cached gradient, keys and learning rate), so the results do not depend on
which rows share a pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nabla_jax.decoding.config import DecodeHyper, DecodeProgram
from nabla_jax.decoding.keys import DTO, stream_keys
from nabla_jax.decoding.pair import ModelPair
from nabla_jax.decoding.state import RowState
from nabla_jax.decoding.windows import (
    prefix_caches,
    prefix_rows,
    window_buckets,
    window_problems,
)
from nabla_jax.functional.optimizer import paper_optimizer
from nabla_jax.functional.program import refine_rows
from nabla_jax.runtime.rows import put_rows, selected_first, take_at

__all__ = ["Refined", "gap_learning_rate", "refine", "row_scaled_optimizer", "window_store"]


class Refined(NamedTuple):
    """What :func:`refine` returns, per row.

    Attributes:
      logits: ``[B, J, V]`` float32 logits of the window from the selected position (``J`` = 1,
        or the window ``K`` with several positions per iteration).
      dto_calls: ``[B]`` int32 model calls of the full DTO steps.
      optimized: ``[B]`` int32 window tokens times DTO steps.
      nonfinite: ``[B]`` bool the DTO loss went non-finite.
      original: ``[B, V]`` float32 the rollout's own logits at the selected position (what
        DTO started from).
    """

    logits: jax.Array
    dto_calls: jax.Array
    optimized: jax.Array
    nonfinite: jax.Array
    original: jax.Array


def window_store(lm, resp, at, width: int, latents: bool):
    """Unrefined logits ``[B, width, V]`` float32 of the rollout ``resp`` at positions
    ``at .. at + width - 1`` (clipped to the buffer; latents mode applies the LM head)."""
    store = resp.hidden if latents else resp.logits
    if width == 1:
        first = take_at(store, at)
        return (lm.head_logits(first) if latents else first).astype(jnp.float32)[:, None]
    rows = jnp.stack([take_at(store, at + j) for j in range(width)], axis=1)
    return (lm.head_logits(rows) if latents else rows).astype(jnp.float32)


def gap_learning_rate(logits, h: DecodeHyper, prog: DecodeProgram):
    """Per-row DTO learning rate ``[B]`` sized to the top-1/top-2 gap of the selected
    position's ``logits [B, V]``: ``dto_lr_gap × gap / num_steps`` (floored at 1e-6). Adam moves
    a logit by about the learning rate per step, so the steps together can close the gap."""
    top2 = jax.lax.top_k(logits, 2)[0]
    lr = h.dto_lr_gap * (top2[:, 0] - top2[:, 1]) / prog.dto.num_steps
    return jnp.maximum(lr, 1e-6)


def row_scaled_optimizer(prog: DecodeProgram, h: DecodeHyper, lr_rows):
    """The paper's DTO optimizer (schedule, Adam) with row ``b``'s updates scaled so that its
    peak learning rate is ``lr_rows[b]`` instead of ``h.dto.learning_rate``; ``lr_rows [B]``."""
    ratio = (lr_rows / h.dto.learning_rate)[:, None, None]

    def scale(updates, params=None):
        del params
        return jax.tree.map(lambda u: u * ratio.astype(u.dtype), updates)

    return optax.chain(paper_optimizer(prog.dto, h.dto), optax.stateless(scale))


def refine(m: ModelPair, state: RowState, at, chosen, h: DecodeHyper, *,
           prog: DecodeProgram) -> Refined:  # fmt: skip
    """DTO on the windows at ``at [B]`` of the rows in ``chosen [B]`` (traceable)."""
    latents = prog.dto.mode == "latents"
    b = at.shape[0]
    width = 1 if prog.positions_per_iteration == 1 else prog.window
    zero = jnp.zeros((b,), jnp.int32)
    if not prog.use_dto:
        logits = window_store(m.lm, state.resp, at, width, latents)
        return Refined(logits, zero, zero, jnp.zeros((b,), bool), logits[:, 0])
    here = window_store(m.lm, state.resp, at, 1, latents)[:, 0]
    lr = gap_learning_rate(here, h, prog) if prog.dto_lr_gap else None
    given = prefix_caches(m.lm, state, at, latents)
    keys = stream_keys(state.base_key, DTO, state.counters.refinements)
    shapes = window_buckets(prog.window, state.resp.tokens.shape[1])[-prog.dto_window_shapes :]

    def dto_pass(problems, given, keys, lr):
        """DTO on the rows of ``problems``: logits ``[R, width, V]``, full steps, non-finite."""
        tx = None if lr is None else row_scaled_optimizer(prog, h, lr)  # None: the paper's
        logits, final, trace = refine_rows(
            m.lm, m.rm, m.rm_table, problems, keys, h.dto, prog.dto, given, tx
        )
        logits = logits[:, :width]
        if logits.shape[1] < width:  # a short bucket: pad to the window
            logits = jnp.pad(logits, ((0, 0), (0, width - logits.shape[1]), (0, 0)))
        return logits, final.full_steps, jnp.any(trace.nonfinite, axis=0)

    def compacted(problems, c):
        """DTO on the selected rows only, ``c`` at a time, scattered back into ``[B, ...]``."""
        passes = -(-b // c)
        order, count = selected_first(chosen, passes * c)
        v = m.lm.config.vocab_size
        out0 = (jnp.zeros((b, width, v), jnp.float32), zero, jnp.zeros((b,), bool))

        def one_pass(i, out):
            slots = i * c + jnp.arange(c)
            idx, valid = order[slots], slots < count
            sub = jax.tree.map(lambda x: x[idx], problems)
            sub = sub._replace(row_valid=valid.astype(sub.row_valid.dtype),
                               window_mask=sub.window_mask * valid[:, None])  # fmt: skip
            got = dto_pass(sub, prefix_rows(given, idx), keys[idx],
                           None if lr is None else lr[idx])  # fmt: skip
            return tuple(put_rows(o, idx, g, valid) for o, g in zip(out, got, strict=True))

        return jax.lax.fori_loop(0, (count + c - 1) // c, one_pass, out0)

    def branch(k, tail):
        def run(_):
            problems, wmask = window_problems(
                m.lm, state, at, chosen, k, latents, tail, rm_ids=m.rm_ids
            )
            if prog.dto_rows is None:
                logits, full_steps, nonfinite = dto_pass(problems, given, keys, lr)
            else:
                logits, full_steps, nonfinite = compacted(problems, prog.dto_rows)
            return logits, full_steps, nonfinite, jnp.sum(wmask, axis=-1)

        return run

    def skip(_):
        v = m.lm.config.vocab_size
        return jnp.zeros((b, width, v), jnp.float32), zero, jnp.zeros((b,), bool), zero

    rest = jnp.max(jnp.where(chosen, state.resp.length - at, 0))
    fits = jnp.asarray([k + t for k, t in shapes]) >= rest
    index = jnp.where(jnp.any(chosen), 1 + jnp.argmax(fits), 0)
    branches = [skip] + [branch(k, t) for k, t in shapes]
    logits, full_steps, nonfinite, k_used = jax.lax.switch(index, branches, None)
    optimized = k_used * prog.dto.num_steps
    return Refined(logits, full_steps * prog.dto.calls_per_full_step, optimized, nonfinite, here)
