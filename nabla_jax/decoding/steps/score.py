"""Step 5 — score: the reward of every new response (proposals and first rollouts).

First rollouts are scored too: their reward and RM keys/values are what the later acceptance
tests and refinements of the row use. The score is the reward model's, or a host scorer's for
the acceptance test; it is skipped when no row has a new response, and entirely when the loop
neither tests proposals nor refines with the reward model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.config import DecodeProgram
from nabla_jax.decoding.pair import ModelPair
from nabla_jax.decoding.scoring import Scorer, rm_input_length, score_responses
from nabla_jax.decoding.state import RowState
from nabla_jax.decoding.steps.resample import Proposal
from nabla_jax.decoding.steps.rollout import Rolled
from nabla_jax.decoding.stopping import StopTables
from nabla_jax.functional.step import uses_rm

__all__ = ["Scores", "score"]


class Scores(NamedTuple):
    """Rewards of :func:`score`, per row.

    Attributes:
      current: ``[B]`` float32 the current response's reward (kept from when it was made).
      new: ``[B]`` float32 the new response's reward (0 where there is none).
      new_tokens: ``[B]`` int32 RM input tokens of the new response.
      current_tokens: ``[B]`` int32 RM input tokens of the current response.
      rm_cache: the reward model's keys/values of the new responses.
    """

    current: jax.Array
    new: jax.Array
    new_tokens: jax.Array
    current_tokens: jax.Array
    rm_cache: object


def score(m: ModelPair, state: RowState, proposal: Proposal, rolled: Rolled,
          tables: StopTables, *, prog: DecodeProgram,
          scorer: Scorer | None = None) -> Scores:  # fmt: skip
    """Score the new responses of the rows that have one (traceable)."""
    resp = state.resp
    rows = state.fresh | proposal.proposing
    refines_with_rm = (prog.use_dto or prog.uses_probe) and uses_rm(m.rm, prog.dto)
    if prog.rejection_sampling or refines_with_rm:
        hook = scorer if prog.rejection_sampling else None
        b = rows.shape[0]
        slots = state.rm_cache.k.shape[2]
        new = rolled.resp

        def run(_):
            return score_responses(m.rm, state.rm_frame, new.tokens, new.length, tables,
                                   scorer=hook, wanted=rows, cache_slots=slots,
                                   rm_ids=m.rm_ids)  # fmt: skip

        def skip(_):
            return jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.int32), state.rm_cache

        new_score, rm_tokens, new_rm = jax.lax.cond(jnp.any(rows), run, skip, None)
    else:
        new_score, rm_tokens, new_rm = state.score, jnp.zeros_like(rolled.start), state.rm_cache
    cur_tokens = rm_input_length(state.rm_frame, resp.tokens, resp.length, tables)
    return Scores(state.score, new_score, rm_tokens, cur_tokens, new_rm)
