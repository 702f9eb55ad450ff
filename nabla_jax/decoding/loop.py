"""One ∇-Reasoner iteration over every slot, and the compiled loop that repeats it on device.

:func:`iteration` advances every live row of a :class:`~nabla_jax.decoding.state.RowState` by
one step of the algorithm, with per-row masks instead of Python control flow:

1. rows that have used their generation budget commit the rest of their rollout and finish;
2. **select** the first ahead position that is uncertain by every configured criterion (top-1
   probability ≤ the confidence threshold, entropy ≥ the entropy threshold, and — when the probe
   is on — a gradient norm ≥ the threshold, probing window after window); commit the tokens
   before it; rows with no candidate commit everything and finish ("converged");
3. **refine** the window at the selected position (:func:`~nabla_jax.functional.refine_rows`,
   skipped by ``lax.cond`` when no row selected one);
4. **resample** that position from the refined logits;
5. **roll out** ``committed ++ [new token]`` for rows whose token changed (a proposal), and the
   first rollout of freshly inserted rows — one
   :func:`~nabla_jax.decoding.rollout.continue_responses` call for both;
6. **score** current and proposed response with the reward model (or a host scorer) and accept
   iff the proposal scores higher (or always, without rejection sampling);
7. **commit** the position (the new token if accepted, else the old one); a row whose committed
   tokens reach the end of its response finishes.

The exploration options of ``DecodeConfig`` (:mod:`nabla_jax.decoding.explore`) change steps
2-4 and 7: the probe's threshold can be a rank within the window (``grad_top_k`` /
``grad_quantile``); the DTO learning rate can be sized per row to the selected logit's gap
(``dto_lr_gap``); the resample can leave out the current token; an iteration can resample
several positions of the refined window and commit through the last
(``positions_per_iteration``; the rollout keeps the ahead tokens between them); and a row can
start another pass from its first token while budget remains (``refine_passes``).

:func:`run_chunk` inserts waiting prompts into free slots and runs iterations in a
``lax.while_loop`` until every row has finished, ``max_iters`` iterations have run, or — when
the host holds more prompts — a slot has come free. Model calls per row: one per generated
token, ``calls_per_full_step`` per full DTO step and per probe, one per RM scoring.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.config import DecodeConfig, DecodeHyper
from nabla_jax.decoding.explore import (
    gap_learning_rate,
    rank_threshold,
    resample_several,
    resample_tokens,
    row_scaled_optimizer,
    window_store,
)
from nabla_jax.decoding.indexing import first_index, put_at, take_at
from nabla_jax.decoding.keys import DTO, PROBE, RESAMPLE, ROLLOUT, stream_keys
from nabla_jax.decoding.rollout import SamplingProgram, continue_responses, select_rows
from nabla_jax.decoding.scoring import rm_input_length, score_responses
from nabla_jax.decoding.state import (
    END_CONVERGED,
    END_MAX_GENERATIONS,
    END_STOPPED,
    Inserts,
    RowState,
    insert_rows,
)
from nabla_jax.decoding.stopping import STOP_EOS, STOP_LENGTH, StopTables, hits_eos
from nabla_jax.decoding.windows import prefix_caches, window_buckets, window_problems
from nabla_jax.functional.program import grad_norms_rows, refine_rows
from nabla_jax.functional.step import uses_rm

__all__ = ["Models", "Report", "iteration", "run_chunk"]


class Models(NamedTuple):
    """The policy, the reward model and the RM embedding rows indexed by LM token id."""

    lm: object
    rm: object
    rm_table: jax.Array


class Report(NamedTuple):
    """What the host reads after a chunk: enough to assemble finished rows' results."""

    finished: jax.Array
    live: jax.Array
    tokens: jax.Array
    committed: jax.Array
    refinement_end: jax.Array
    counters: object
    events: object


def _probe_select(m: Models, state, cheap, committed, ready, h: DecodeHyper, prog):
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
        problems, wmask = window_problems(m.lm, state, cand, searching, k, latents)
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


def _refine_position(m: Models, state, at, chosen, h: DecodeHyper, prog: DecodeConfig):
    """Logits ``[B, J, V]`` of the window from the selected position after DTO (``J`` = 1, or
    the window ``K`` with several positions per iteration), plus DTO bookkeeping per row."""
    latents = prog.dto.mode == "latents"
    b = at.shape[0]
    width = 1 if prog.positions_per_iteration == 1 else prog.window
    zero = jnp.zeros((b,), jnp.int32)
    if not prog.use_dto:
        logits = window_store(m.lm, state.resp, at, width, latents)
        return logits, zero, zero, jnp.zeros((b,), bool)
    tx = None  # the paper's optimizer
    if prog.dto_lr_gap is not None:
        here = window_store(m.lm, state.resp, at, 1, latents)[:, 0]
        tx = row_scaled_optimizer(prog, h, gap_learning_rate(here, h, prog))
    given = prefix_caches(m.lm, state, at, latents)
    keys = stream_keys(state.base_key, DTO, state.counters.refinements)
    shapes = window_buckets(prog.window, state.resp.tokens.shape[1])

    def branch(k, tail):
        def run(_):
            problems, wmask = window_problems(m.lm, state, at, chosen, k, latents, tail)
            logits, final, trace = refine_rows(
                m.lm, m.rm, m.rm_table, problems, keys, h.dto, prog.dto, given, tx
            )
            nonfinite = jnp.any(trace.nonfinite, axis=0)
            logits = logits[:, :width]
            if logits.shape[1] < width:  # a short bucket: pad to the window
                logits = jnp.pad(logits, ((0, 0), (0, width - logits.shape[1]), (0, 0)))
            return logits, final.full_steps, nonfinite, jnp.sum(wmask, axis=-1)

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
    return logits, full_steps * prog.dto.calls_per_full_step, optimized, nonfinite


def _score_new(m: Models, state, new_resp, rows, tables, scorer, prog):
    """Reward of the new responses of ``rows`` (first rollouts and proposals) and their RM
    keys/values: ``(score [B], rm_tokens [B], rm_cache)``; skipped when no row has one."""
    b = rows.shape[0]
    slots = state.rm_cache.k.shape[2]
    args = (
        state.rm_prefix_ids, state.rm_prefix_mask, new_resp.tokens, new_resp.length,
        state.rm_suffix_ids, state.rm_suffix_mask, tables, scorer, rows, slots,
    )  # fmt: skip

    def run(_):
        return score_responses(m.rm, *args)

    def skip(_):
        return jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.int32), state.rm_cache

    return jax.lax.cond(jnp.any(rows), run, skip, None)


def iteration(m: Models, state: RowState, h: DecodeHyper, tables: StopTables, *,
              prog: DecodeConfig, scorer=None, pad_id: int = 0) -> RowState:  # fmt: skip
    """One step of the ∇-Reasoner loop for every live row (traceable; see the module doc)."""
    resp, c = state.resp, state.counters
    n = resp.tokens.shape[1]
    slots = jnp.arange(n)[None, :]

    # 1. Generation budget.
    ready = state.live & ~state.fresh
    spent = ready & (c.generations >= h.max_n_generations)
    committed = jnp.where(spent, resp.length, state.committed)
    end = jnp.where(spent, END_MAX_GENERATIONS, state.refinement_end)
    ready = ready & ~spent
    iterations = c.iterations + ready

    # 2. Select.
    cheap = (slots >= committed[:, None]) & (slots < resp.length[:, None]) & ready[:, None]
    if prog.confidence_threshold is not None:
        cheap = cheap & (resp.top1 <= h.confidence_threshold)
    if prog.entropy_threshold:
        cheap = cheap & (resp.entropy >= h.entropy_threshold)
    probes, probe_calls = c.probes, c.probe_calls
    if prog.uses_probe:
        pos, probes, probe_calls, qualified = _probe_select(
            m, state, cheap, committed, ready, h, prog
        )
    else:
        pos, qualified = first_index(cheap, n), cheap
    converged = ready & (pos >= n)
    pass_start = state.committed
    committed = jnp.where(converged, resp.length, committed)
    end = jnp.where(converged, END_CONVERGED, end)
    chosen = ready & ~converged
    committed = jnp.where(chosen, pos, committed)

    # 3. Refine; 4. resample.
    window_logits, dto_calls, optimized, nonfinite = _refine_position(
        m, state, committed, chosen, h, prog
    )
    keys = stream_keys(state.base_key, RESAMPLE, iterations)
    old = take_at(resp.tokens, committed)
    if prog.positions_per_iteration == 1:
        tok = resample_tokens(keys, window_logits[:, 0], old, h, prog)
        proposing = chosen & (tok != old)
        last, proposal = committed, put_at(resp.tokens, committed, tok, proposing)
    else:
        picked, new_tokens = resample_several(keys, window_logits, resp.tokens, committed,
                                               qualified & chosen[:, None], h, prog)  # fmt: skip
        tok = take_at(new_tokens, committed)
        proposing = chosen & jnp.any(picked & (new_tokens != resp.tokens), axis=-1)
        last = jnp.max(jnp.where(picked, slots, committed[:, None]), axis=-1)
        proposal = jnp.where(proposing[:, None], new_tokens, resp.tokens)

    # 5. Proposals and first rollouts, one rollout call.
    tok_eos = hits_eos(tok, tables)
    empty = proposing & (tok_eos | (n - committed - 1 <= 0))
    rolling = (proposing & ~empty) | state.fresh
    cand = resp._replace(tokens=proposal)
    start = jnp.where(state.fresh, 0, committed + 1)
    gen_keys = stream_keys(state.base_key, ROLLOUT, c.generations)
    limit = jnp.full_like(start, n)
    roll_prog = SamplingProgram.of(prog.rollout)

    prompt_len = jnp.sum(state.prompt_mask, axis=-1)
    p_width = state.prompt_ids.shape[1]
    # The proposal continues on the current cache: keys/values of prompt ++ response[:c].
    kept = jnp.arange(state.lm_kv.mask.shape[1])[None, :] < p_width + committed[:, None]
    kv = state.lm_kv._replace(mask=state.lm_kv.mask * kept)

    forced = None
    if prog.positions_per_iteration > 1:  # the ahead tokens up to the last position are kept
        forced = (proposal, jnp.where(state.fresh, -1, last))

    def roll(_):
        return continue_responses(
            m.lm, kv, p_width, prompt_len, (state.first_logits, state.first_hidden), cand,
            start, limit, rolling, gen_keys, h.rollout, tables, roll_prog, pad_id, forced,
        )  # fmt: skip

    def keep(_):
        return cand, kv, jnp.zeros_like(start)

    new_resp, new_kv, calls = jax.lax.cond(jnp.any(rolling), roll, keep, None)
    new_resp = new_resp._replace(
        length=jnp.where(empty, committed + 1, new_resp.length),
        stop=jnp.where(empty, jnp.where(tok_eos, STOP_EOS, STOP_LENGTH), new_resp.stop),
    )

    # 6. Acceptance test: the proposal's reward against the current response's (kept from when
    # that response was made). First rollouts are scored too: their reward and RM keys/values
    # are what the later tests and refinements of the row use.
    refines_with_rm = (prog.use_dto or prog.uses_probe) and uses_rm(m.rm, prog.dto)
    if prog.rejection_sampling or refines_with_rm:
        hook = scorer if prog.rejection_sampling else None
        new_score, rm_tokens, new_rm = _score_new(
            m, state, new_resp, state.fresh | proposing, tables, hook, prog
        )
    else:
        new_score, rm_tokens, new_rm = state.score, jnp.zeros_like(start), state.rm_cache
    cur, prop = state.score, new_score
    cur_tokens = rm_input_length(
        state.rm_prefix_mask, resp.tokens, resp.length, state.rm_suffix_mask, tables
    )
    bar = cur if prog.accept_margin is None else cur + h.accept_margin
    accepted = proposing & (prop > bar) if prog.rejection_sampling else proposing

    # 7. Commit.
    take = accepted | state.fresh
    resp_next = select_rows(take, new_resp, resp)
    lm_kv = select_rows(take, new_kv, state.lm_kv)
    rm_cache = select_rows(take, new_rm, state.rm_cache)
    score = jnp.where(take, new_score, state.score)
    ev = state.events
    at = ev.count
    scored = proposing & prog.rejection_sampling
    events = ev._replace(
        count=ev.count + chosen,
        position=put_at(ev.position, at, committed, chosen),
        old_token=put_at(ev.old_token, at, old, chosen),
        new_token=put_at(ev.new_token, at, jnp.where(proposing, tok, old), chosen),
        proposed=put_at(ev.proposed, at, proposing, chosen),
        accepted=put_at(ev.accepted, at, accepted, chosen),
        score_current=put_at(ev.score_current, at, cur, chosen),
        score_proposed=put_at(ev.score_proposed, at, prop, chosen),
        scored=put_at(ev.scored, at, scored, chosen),
    )
    committed = jnp.where(chosen, jnp.minimum(last + 1, resp_next.length), committed)
    stopped = chosen & (committed >= resp_next.length)
    end = jnp.where(stopped, END_STOPPED, end)
    generations = c.generations + (proposing | state.fresh)
    passes = c.passes
    if prog.refine_passes > 1:  # 5. another pass while the budget lasts
        again = (stopped | (converged & (pass_start > 0))) & (passes + 1 < prog.refine_passes)
        again = again & (generations < h.max_n_generations)
        committed = jnp.where(again, 0, committed)
        passes = passes + again
        stopped, converged = stopped & ~again, converged & ~again
    done = spent | converged | stopped
    counters = c._replace(
        generations=generations,
        rejections=c.rejections + (proposing & ~accepted),
        rollout_calls=c.rollout_calls + calls,
        dto_calls=c.dto_calls + jnp.where(chosen, dto_calls, 0),
        probe_calls=probe_calls,
        score_calls=c.score_calls + 2 * scored,  # the algorithm scores both responses
        generated_tokens=c.generated_tokens + jnp.where(rolling, new_resp.length - start, 0),
        optimized_tokens=c.optimized_tokens + jnp.where(chosen, optimized, 0),
        rewarded_tokens=c.rewarded_tokens + jnp.where(scored, rm_tokens + cur_tokens, 0),
        iterations=iterations,
        refinements=c.refinements + (chosen & prog.use_dto),
        probes=probes,
        nonfinite=c.nonfinite + (chosen & nonfinite),
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


@functools.partial(
    jax.jit, static_argnames=("prog", "scorer", "pad_id"), donate_argnames=("state",)
)
def run_chunk(m: Models, state: RowState, ins: Inserts, key, h: DecodeHyper, tables, max_iters,
              refill, *, prog: DecodeConfig, scorer=None, pad_id: int = 0):  # fmt: skip
    """Insert prompts, then iterate on device; returns ``(state, Report)``.

    Stops after ``max_iters`` iterations, when no row is live, or as soon as ``refill`` slots
    are free (the host passes how many waiting prompts it would insert; 0 = never).
    """
    state = insert_rows(m.lm, state, ins, key)

    def cond(carry):
        it, s = carry
        free = jnp.sum(~s.live)
        return (it < max_iters) & jnp.any(s.live) & ~((refill > 0) & (free >= refill))

    def body(carry):
        it, s = carry
        return it + 1, iteration(m, s, h, tables, prog=prog, scorer=scorer, pad_id=pad_id)

    _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
    report = Report(
        state.finished, state.live, state.resp.tokens, state.committed,
        state.refinement_end, state.counters, state.events,
    )  # fmt: skip
    return state, report
