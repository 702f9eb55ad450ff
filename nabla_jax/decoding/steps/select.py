"""Step 1 — select: which rows act this iteration, and the position each one refines.

A row whose generation budget is spent commits the rest of its rollout and finishes. The others
look for the first ahead position that is uncertain by every configured criterion (top-1
probability ≤ the confidence threshold, entropy ≥ the entropy threshold, and — when the probe
is on — a gradient norm ≥ the threshold or within the window's rank rule, probing window after
window). The tokens before it are committed; a row with no candidate commits everything and
finishes ("converged").
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.config import DecodeHyper, DecodeProgram
from nabla_jax.decoding.keys import PROBE, stream_keys
from nabla_jax.decoding.pair import ModelPair
from nabla_jax.decoding.state import END_CONVERGED, END_MAX_GENERATIONS, RowState
from nabla_jax.decoding.windows import prefix_caches, window_problems
from nabla_jax.functional.program import grad_norms_rows
from nabla_jax.runtime.rows import first_index

__all__ = ["Selection", "rank_threshold", "select"]


class Selection(NamedTuple):
    """What :func:`select` decided, per row (``[B]`` unless noted).

    Attributes:
      ready: the row was live, not fresh, and had budget left.
      spent: the row's generation budget was spent (it finishes).
      converged: the row had no candidate position (it finishes).
      chosen: the row refines ``committed`` this iteration.
      committed: int32 tokens final so far (for chosen rows: the selected position).
      pass_start: ``committed`` before this iteration.
      end: int32 ``END_*`` of rows finishing here (else unchanged).
      iterations: int32 iteration counter after this iteration.
      qualified: ``[B, L]`` bool every qualifying position (the probe's window included).
      probes, probe_calls: int32 probe counters after this iteration.
    """

    ready: jax.Array
    spent: jax.Array
    converged: jax.Array
    chosen: jax.Array
    committed: jax.Array
    pass_start: jax.Array
    end: jax.Array
    iterations: jax.Array
    qualified: jax.Array
    probes: jax.Array
    probe_calls: jax.Array


def rank_threshold(norms, valid, h: DecodeHyper, prog: DecodeProgram):
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


def _probe(m: ModelPair, state: RowState, cheap, committed, ready, h: DecodeHyper,
           prog: DecodeProgram):  # fmt: skip
    """Gradient-probe selection: ``(position [B] (L = none), probes [B], probe_calls [B],
    qualified [B, L])`` — ``qualified`` marks every qualifying position of the window the
    position was found in."""
    n = cheap.shape[1]
    k = prog.window
    slots = jnp.arange(n)[None, :]
    latents = prog.dto.mode == "latents"
    per_probe = prog.dto.calls_per_full_step

    def cond(carry):
        return jnp.any(carry[0])

    def body(carry):
        searching, cursor, pos, probes, calls, qual = carry
        cand = first_index(cheap & (slots >= cursor[:, None]), n)
        searching = searching & (cand < n)
        problems, wmask = window_problems(m.lm, state, cand, searching, k, latents, rm_ids=m.rm_ids)
        given = prefix_caches(m.lm, state, cand, latents)
        keys = stream_keys(state.base_key, PROBE, probes)
        norms = grad_norms_rows(m.lm, m.rm, m.rm_table, problems, keys, h.dto, prog.dto, given)
        offsets = cand[:, None] + jnp.arange(k)[None, :]
        in_cheap = jnp.take_along_axis(cheap, jnp.clip(offsets, 0, n - 1), axis=1)
        ok = in_cheap & (norms >= h.grad_threshold) & (wmask > 0)
        if prog.grad_rank is not None:
            ok = ok & (norms >= rank_threshold(norms, in_cheap & (wmask > 0), h, prog))
        found = searching & jnp.any(ok, axis=-1)
        pos = jnp.where(found, cand + jnp.argmax(ok, axis=-1), pos)
        b = jnp.arange(ok.shape[0])[:, None]
        hit = (ok & found[:, None]).astype(jnp.int32)
        qual = qual | (
            jnp.zeros(qual.shape, jnp.int32).at[b, jnp.clip(offsets, 0, n - 1)].max(hit) > 0
        )
        exhausted = searching & ~found & (cand + k >= state.resp.length)
        probes = probes + searching
        calls = calls + searching * per_probe
        cursor = jnp.where(searching, cand + k, cursor)
        return searching & ~found & ~exhausted, cursor, pos, probes, calls, qual

    c = state.counters
    qual0 = jnp.zeros_like(cheap)
    init = (ready, committed, jnp.full_like(committed, n), c.probes, c.probe_calls, qual0)
    _, _, pos, probes, calls, qual = jax.lax.while_loop(cond, body, init)
    return pos, probes, calls, qual


def select(m: ModelPair, state: RowState, h: DecodeHyper, *, prog: DecodeProgram) -> Selection:
    """The rows that act this iteration and their positions (traceable)."""
    resp, c = state.resp, state.counters
    n = resp.tokens.shape[1]
    slots = jnp.arange(n)[None, :]

    ready = state.live & ~state.fresh
    spent = ready & (c.generations >= h.max_n_generations)
    committed = jnp.where(spent, resp.length, state.committed)
    end = jnp.where(spent, END_MAX_GENERATIONS, state.refinement_end)
    ready = ready & ~spent
    iterations = c.iterations + ready

    cheap = (slots >= committed[:, None]) & (slots < resp.length[:, None]) & ready[:, None]
    if prog.confidence:
        cheap = cheap & (resp.top1 <= h.confidence_threshold)
    if prog.entropy:
        cheap = cheap & (resp.entropy >= h.entropy_threshold)
    probes, probe_calls = c.probes, c.probe_calls
    if prog.uses_probe:
        pos, probes, probe_calls, qualified = _probe(m, state, cheap, committed, ready, h, prog)
    else:
        pos, qualified = first_index(cheap, n), cheap
    converged = ready & (pos >= n)
    pass_start = state.committed
    committed = jnp.where(converged, resp.length, committed)
    end = jnp.where(converged, END_CONVERGED, end)
    chosen = ready & ~converged
    committed = jnp.where(chosen, pos, committed)
    return Selection(
        ready=ready, spent=spent, converged=converged, chosen=chosen, committed=committed,
        pass_start=pass_start, end=end, iterations=iterations, qualified=qualified,
        probes=probes, probe_calls=probe_calls,
    )  # fmt: skip
