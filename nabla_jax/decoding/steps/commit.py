"""Step 7 — commit: the selected position becomes final, and the row's records advance.

The accepted proposal (or a fresh row's first rollout) replaces the current response, its LM
and RM caches and its score; the position is committed (the new token if accepted, else the old
one; with several positions per iteration, through the last). A row whose committed tokens
reach the end of its response finishes, or — with ``refine_passes`` — starts another pass from
its first token while budget remains. The refinement is recorded in the row's events and its
counters advance.
"""

from __future__ import annotations

import jax.numpy as jnp

from nabla_jax.decoding.buffers import select_rows
from nabla_jax.decoding.config import DecodeHyper, DecodeProgram
from nabla_jax.decoding.diagnostics import Diagnosis
from nabla_jax.decoding.state import END_STOPPED, RowState
from nabla_jax.decoding.steps.refine import Refined
from nabla_jax.decoding.steps.resample import Proposal
from nabla_jax.decoding.steps.rollout import Rolled
from nabla_jax.decoding.steps.score import Scores
from nabla_jax.decoding.steps.select import Selection
from nabla_jax.runtime.rows import put_at

__all__ = ["commit"]


def commit(state: RowState, sel: Selection, refined: Refined, proposal: Proposal,
           rolled: Rolled, scores: Scores, accepted, diagnosis: Diagnosis, h: DecodeHyper, *,
           prog: DecodeProgram) -> RowState:  # fmt: skip
    """The next :class:`RowState` (traceable)."""
    c, chosen, proposing = state.counters, sel.chosen, proposal.proposing
    take = accepted | state.fresh
    resp_next = select_rows(take, rolled.resp, state.resp)
    lm_kv = select_rows(take, rolled.kv, state.lm_kv)
    rm_cache = select_rows(take, scores.rm_cache, state.rm_cache)
    score = jnp.where(take, scores.new, state.score)

    ev = state.events
    at = ev.count
    scored = proposing & prog.rejection_sampling
    new_token = jnp.where(proposing, proposal.token, proposal.old)
    no_rho = jnp.full_like(diagnosis.kl, jnp.nan)  # fidelity not measured
    rho = no_rho if diagnosis.fidelity is None else diagnosis.fidelity
    events = ev._replace(
        count=ev.count + chosen,
        position=put_at(ev.position, at, sel.committed, chosen),
        old_token=put_at(ev.old_token, at, proposal.old, chosen),
        new_token=put_at(ev.new_token, at, new_token, chosen),
        proposed=put_at(ev.proposed, at, proposing, chosen),
        accepted=put_at(ev.accepted, at, accepted, chosen),
        score_current=put_at(ev.score_current, at, scores.current, chosen),
        score_proposed=put_at(ev.score_proposed, at, scores.new, chosen),
        scored=put_at(ev.scored, at, scored, chosen),
        kl=put_at(ev.kl, at, diagnosis.kl, chosen),
        dlogp=put_at(ev.dlogp, at, diagnosis.dlogp, chosen),
        top1_changed=put_at(ev.top1_changed, at, diagnosis.top1_changed, chosen),
        topk_changed=put_at(ev.topk_changed, at, diagnosis.topk_changed, chosen),
        right_token=put_at(ev.right_token, at, diagnosis.right, chosen),
        p_right_before=put_at(ev.p_right_before, at, diagnosis.p_right_before, chosen),
        p_right_after=put_at(ev.p_right_after, at, diagnosis.p_right_after, chosen),
        right_top1_before=put_at(ev.right_top1_before, at, diagnosis.right_top1_before, chosen),
        p_new_before=put_at(ev.p_new_before, at, diagnosis.p_new_before, chosen),
        p_new_after=put_at(ev.p_new_after, at, diagnosis.p_new_after, chosen),
        fidelity=put_at(ev.fidelity, at, rho, chosen),
    )

    committed = jnp.where(chosen, jnp.minimum(proposal.last + 1, resp_next.length), sel.committed)
    stopped = chosen & (committed >= resp_next.length)
    end = jnp.where(stopped, END_STOPPED, sel.end)
    converged = sel.converged
    generations = c.generations + (proposing | state.fresh)
    passes = c.passes
    if prog.refine_passes > 1:  # another pass while the budget lasts
        again = (stopped | (converged & (sel.pass_start > 0))) & (passes + 1 < prog.refine_passes)
        again = again & (generations < h.max_n_generations)
        committed = jnp.where(again, 0, committed)
        passes = passes + again
        stopped, converged = stopped & ~again, converged & ~again
    done = sel.spent | converged | stopped

    rolling, start, new_len = rolled.rolling, rolled.start, rolled.resp.length
    counters = c._replace(
        generations=generations,
        rejections=c.rejections + (proposing & ~accepted),
        rollout_calls=c.rollout_calls + rolled.calls,
        dto_calls=c.dto_calls + jnp.where(chosen, refined.dto_calls, 0),
        probe_calls=sel.probe_calls,
        score_calls=c.score_calls + 2 * scored,  # the algorithm scores both responses
        generated_tokens=c.generated_tokens + jnp.where(rolling, new_len - start, 0),
        optimized_tokens=c.optimized_tokens + jnp.where(chosen, refined.optimized, 0),
        rewarded_tokens=c.rewarded_tokens
        + jnp.where(scored, scores.new_tokens + scores.current_tokens, 0),
        iterations=sel.iterations,
        refinements=c.refinements + (chosen & prog.use_dto),
        probes=sel.probes,
        nonfinite=c.nonfinite + (chosen & refined.nonfinite),
        passes=passes,
    )
    return state._replace(
        resp=resp_next,
        lm_kv=lm_kv,
        rm_cache=rm_cache,
        score=score,
        committed=committed,
        live=state.live & ~done,
        fresh=jnp.zeros_like(state.fresh),
        finished=state.finished | done,
        refinement_end=end,
        counters=counters,
        events=events,
    )
