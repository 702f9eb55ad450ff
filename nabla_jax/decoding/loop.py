"""One ∇-Reasoner iteration over every slot, and the compiled loop that repeats it on device.

:func:`iteration` advances every live row of a :class:`~nabla_jax.decoding.state.RowState` by
one step of the algorithm, with per-row masks instead of Python control flow — the seven steps
of :mod:`nabla_jax.decoding.steps`, in order:

1. :func:`~nabla_jax.decoding.steps.select.select` — rows whose generation budget is spent
   commit the rest of their rollout and finish; the others find the first uncertain ahead
   position (and commit the tokens before it), or finish when there is none;
2. :func:`~nabla_jax.decoding.steps.refine.refine` — DTO on the window at that position
   (skipped when no row selected one);
3. :func:`~nabla_jax.decoding.steps.resample.resample` — draw that position from the refined
   logits;
4. :func:`~nabla_jax.decoding.steps.rollout.roll_out` — complete ``committed ++ [new token]``
   for rows whose token changed (a proposal), and the first rollout of freshly inserted rows,
   in one rollout call;
5. :func:`~nabla_jax.decoding.steps.score.score` — the reward of every new response;
6. :func:`~nabla_jax.decoding.steps.accept.accept` — keep a proposal iff it scores higher
   (by the margin, when set), or always without rejection sampling;
7. :func:`~nabla_jax.decoding.steps.commit.commit` — the position becomes final; a row whose
   committed tokens reach the end of its response finishes (or starts another pass).

The exploration options of ``DecodeConfig`` change steps 1–3 and 7: the probe's threshold can
be a rank within the window (``grad_top_k`` / ``grad_quantile``); the DTO learning rate can be
sized per row to the selected logit's gap (``dto_lr_gap``); the resample can leave out the
current token; an iteration can resample several positions of the refined window and commit
through the last (``positions_per_iteration``); and a row can start another pass from its
first token while budget remains (``refine_passes``).

:func:`run_chunk` inserts waiting prompts into free slots and runs iterations in a
``lax.while_loop`` until every row has finished, ``max_iters`` iterations have run, or — when
the host holds more prompts — a slot has come free; :func:`run_chunk_exported` is the same
program read back from a serialized copy (``jax.export``) when one exists. Model calls per row:
one per generated token, ``calls_per_full_step`` per full DTO step and per probe, one per RM
scoring.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.config import DecodeHyper, DecodeProgram
from nabla_jax.decoding.diagnostics import NextTokenOracle, diagnose, oracle_tokens
from nabla_jax.decoding.fidelity import first_order_fidelity
from nabla_jax.decoding.pair import ModelPair
from nabla_jax.decoding.scoring import Scorer
from nabla_jax.decoding.state import Inserts, RowState, insert_rows
from nabla_jax.decoding.steps.accept import accept
from nabla_jax.decoding.steps.commit import commit
from nabla_jax.decoding.steps.refine import refine
from nabla_jax.decoding.steps.resample import resample
from nabla_jax.decoding.steps.rollout import roll_out
from nabla_jax.decoding.steps.score import score
from nabla_jax.decoding.steps.select import select
from nabla_jax.decoding.stopping import StopTables
from nabla_jax.runtime.exported import ProgramStore

__all__ = [
    "ChunkLimits",
    "Models",
    "Report",
    "chunk_state",
    "iteration",
    "report_of",
    "run_chunk",
    "run_chunk_exported",
]

#: The models pytree (kept under its former name).
Models = ModelPair


class ChunkLimits(NamedTuple):
    """When :func:`run_chunk` returns to the host (run-time int32 scalars).

    Attributes:
      max_iters: after at most this many iterations.
      refill: as soon as this many slots are free (the waiting prompts the host would insert;
        0 = never).
    """

    max_iters: jax.Array
    refill: jax.Array


class Report(NamedTuple):
    """What the host reads after a chunk: enough to assemble finished rows' results."""

    finished: jax.Array
    live: jax.Array
    tokens: jax.Array
    committed: jax.Array
    refinement_end: jax.Array
    counters: object
    events: object


def iteration(m: ModelPair, state: RowState, h: DecodeHyper, tables: StopTables, *,
              prog: DecodeProgram, scorer: Scorer | None = None, pad_id: int = 0,
              oracle: NextTokenOracle | None = None) -> RowState:  # fmt: skip
    """One step of the ∇-Reasoner loop for every live row (traceable; see the module doc).

    ``oracle``: an optional host function naming the right next token of a response prefix;
    the events then record its probability before and after DTO (:mod:`.diagnostics`).
    """
    sel = select(m, state, h, prog=prog)
    refined = refine(m, state, sel.committed, sel.chosen, h, prog=prog)
    right = oracle_tokens(oracle, state.prompt_ids, state.prompt_mask, state.resp.tokens,
                          sel.committed, sel.chosen)  # fmt: skip
    proposal = resample(state, sel, refined, h, prog=prog, right=right)
    diagnosis = diagnose(refined.original, refined.logits[:, 0], proposal.old, proposal.token,
                         right, h, prog=prog)  # fmt: skip
    if prog.fidelity_top_k:
        diagnosis = diagnosis._replace(fidelity=_fidelity(m, state, sel, refined, tables, prog))
    rolled = roll_out(m, state, sel, proposal, h, tables, prog=prog, pad_id=pad_id)
    scores = score(m, state, proposal, rolled, tables, prog=prog, scorer=scorer)
    accepted = accept(proposal, scores, h, prog=prog)
    return commit(state, sel, refined, proposal, rolled, scores, accepted, diagnosis, h,
                  prog=prog)  # fmt: skip


def _fidelity(m: ModelPair, state: RowState, sel, refined, tables, prog: DecodeProgram):
    """Spearman ``[B]`` of the RM gradient's estimates at the selected positions (NaN for rows
    without one; skipped when no row selected one)."""
    b = sel.chosen.shape[0]
    k = min(prog.fidelity_top_k, m.lm.config.vocab_size)

    def run(_):
        rho = first_order_fidelity(m, state.rm_frame, state.resp.tokens, state.resp.length,
                                   sel.committed, refined.logits[:, 0], tables, k)[0]  # fmt: skip
        return jnp.where(sel.chosen, rho, jnp.nan)

    def skip(_):
        return jnp.full((b,), jnp.nan, jnp.float32)

    return jax.lax.cond(jnp.any(sel.chosen), run, skip, None)


def chunk_state(m: ModelPair, state: RowState, inserts: Inserts, key, hyper: DecodeHyper,
                tables: StopTables, limits: ChunkLimits, *, prog: DecodeProgram,
                scorer: Scorer | None = None, pad_id: int = 0,
                oracle: NextTokenOracle | None = None) -> RowState:  # fmt: skip
    """Insert prompts, then iterate (traceable): the state after the chunk.

    Stops after ``limits.max_iters`` iterations, when no row is live, or as soon as
    ``limits.refill`` slots are free.
    """
    state = insert_rows(m.lm, state, inserts, key)

    def cond(carry):
        it, s = carry
        free = jnp.sum(~s.live)
        refill = limits.refill
        return (it < limits.max_iters) & jnp.any(s.live) & ~((refill > 0) & (free >= refill))

    def body(carry):
        it, s = carry
        return it + 1, iteration(
            m, s, hyper, tables, prog=prog, scorer=scorer, pad_id=pad_id, oracle=oracle
        )

    return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))[1]


def report_of(state: RowState) -> Report:
    """The fields of ``state`` the host reads after a chunk."""
    return Report(
        state.finished, state.live, state.resp.tokens,
        state.committed, state.refinement_end, state.counters, state.events,
    )  # fmt: skip


@functools.partial(
    jax.jit, static_argnames=("prog", "scorer", "pad_id", "oracle"), donate_argnames=("state",)
)
def run_chunk(m: ModelPair, state: RowState, *, inserts: Inserts, key, hyper: DecodeHyper,
              tables: StopTables, limits: ChunkLimits, prog: DecodeProgram,
              scorer: Scorer | None = None, pad_id: int = 0,
              oracle: NextTokenOracle | None = None):  # fmt: skip
    """:func:`chunk_state` compiled (the state is donated); returns ``(state, Report)``."""
    state = chunk_state(m, state, inserts, key, hyper, tables, limits, prog=prog,
                        scorer=scorer, pad_id=pad_id, oracle=oracle)  # fmt: skip
    return state, report_of(state)


def run_chunk_exported(store: ProgramStore, m: ModelPair, state: RowState, *, inserts: Inserts,
                       key, hyper: DecodeHyper, tables: StopTables, limits: ChunkLimits,
                       prog: DecodeProgram, pad_id: int = 0):  # fmt: skip
    """:func:`run_chunk` through ``store``'s serialized program for these shapes and ``prog``
    (:mod:`nabla_jax.runtime.exported`): a later process neither traces nor lowers the loop.
    Without host callbacks only (no scorer, no next-token oracle)."""
    fn = functools.partial(chunk_state, prog=prog, pad_id=pad_id)
    state = store.call(
        "run_chunk", fn, (m, state, inserts, key, hyper, tables, limits),
        static=f"prog={prog!r};pad_id={pad_id}", out_tree=jax.tree.structure(state), donate=(1,),
    )  # fmt: skip
    return state, report_of(state)
