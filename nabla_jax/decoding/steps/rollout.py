"""Step 4 — roll out: complete each proposal, and make the first rollout of new rows.

A proposal keeps the committed tokens and its resampled token (with several positions per
iteration, the ahead tokens up to the last resampled one) and continues on the current
response's LM cache — keys/values of ``prompt ++ response[:c]`` — so nothing is recomputed.
Freshly inserted rows roll out from their first token. Both go through one
:func:`~nabla_jax.decoding.continuation.continue_responses` call, skipped when no row needs it.
A proposal whose resampled token is an EOS, or that fills the buffer, is complete as it is.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.buffers import KVState, Responses
from nabla_jax.decoding.config import DecodeHyper, DecodeProgram
from nabla_jax.decoding.continuation import PromptCache, Sampler, Span, continue_responses
from nabla_jax.decoding.keys import ROLLOUT, stream_keys
from nabla_jax.decoding.pair import ModelPair
from nabla_jax.decoding.state import RowState
from nabla_jax.decoding.steps.resample import Proposal
from nabla_jax.decoding.steps.select import Selection
from nabla_jax.decoding.stopping import STOP_EOS, STOP_LENGTH, StopTables, hits_eos

__all__ = ["Rolled", "roll_out"]


class Rolled(NamedTuple):
    """The new responses of :func:`roll_out`, per row.

    Attributes:
      resp: :class:`Responses` — proposals and first rollouts where made, else the proposal as
        resampled.
      kv: their LM keys/values.
      calls: ``[B]`` int32 model calls (generated tokens).
      rolling: ``[B]`` bool rows that rolled out.
      start: ``[B]`` int32 first generated response index.
    """

    resp: Responses
    kv: KVState
    calls: jax.Array
    rolling: jax.Array
    start: jax.Array


def roll_out(m: ModelPair, state: RowState, sel: Selection, proposal: Proposal,
             h: DecodeHyper, tables: StopTables, *, prog: DecodeProgram,
             pad_id: int = 0) -> Rolled:  # fmt: skip
    """Proposals and first rollouts, in one rollout call (traceable)."""
    resp, c, committed = state.resp, state.counters, sel.committed
    n = resp.tokens.shape[1]
    tok_eos = hits_eos(proposal.token, tables)
    empty = proposal.proposing & (tok_eos | (n - committed - 1 <= 0))
    rolling = (proposal.proposing & ~empty) | state.fresh
    cand = resp._replace(tokens=proposal.tokens)
    start = jnp.where(state.fresh, 0, committed + 1)
    gen_keys = stream_keys(state.base_key, ROLLOUT, c.generations)
    limit = jnp.full_like(start, n)

    prompt_len = jnp.sum(state.prompt_mask, axis=-1)
    p_width = state.prompt_ids.shape[1]
    # The proposal continues on the current cache: keys/values of prompt ++ response[:c].
    kept = jnp.arange(state.lm_kv.mask.shape[1])[None, :] < p_width + committed[:, None]
    kv = state.lm_kv._replace(mask=state.lm_kv.mask * kept)

    forced = None
    if prog.positions_per_iteration > 1:  # the ahead tokens up to the last position are kept
        forced = (proposal.tokens, jnp.where(state.fresh, -1, proposal.last))

    def roll(_):
        return continue_responses(
            m.lm,
            prompt=PromptCache(kv, p_width, prompt_len, state.first_logits, state.first_hidden),
            span=Span(cand, start, limit, rolling, gen_keys, forced),
            sampler=Sampler(h.rollout, prog.rollout, tables, pad_id),
        )

    def keep(_):
        return cand, kv, jnp.zeros_like(start)

    new_resp, new_kv, calls = jax.lax.cond(jnp.any(rolling), roll, keep, None)
    new_resp = new_resp._replace(
        length=jnp.where(empty, committed + 1, new_resp.length),
        stop=jnp.where(empty, jnp.where(tok_eos, STOP_EOS, STOP_LENGTH), new_resp.stop),
    )
    return Rolled(new_resp, new_kv, calls, rolling, start)
