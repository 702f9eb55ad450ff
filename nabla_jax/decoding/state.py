"""Typed per-row state of the compiled ∇-Reasoner loop: fixed buffers, masks, counters, events.

The loop decodes ``B`` rows ("slots") at once. A slot holds one prompt from insertion until it
finishes; then the host reads its result and may insert the next prompt. Every field has a
leading ``[B]`` axis and a shape fixed by ``B``, the prompt buckets ``P`` (LM prompt), ``Q`` /
``S`` (RM template prefix / suffix), the response length ``L`` and the vocabulary / hidden size.

The response lives in one buffer (:class:`~nabla_jax.decoding.buffers.Responses`): its first
``committed[b]`` tokens are final; the rest, up to ``length[b]``, is the *ahead* part of the
latest rollout, with the logits (or hidden states) and confidence statistics it was drawn from.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.buffers import (
    KVState,
    Responses,
    empty_responses,
    prefill_prompts,
    select_rows,
)
from nabla_jax.decoding.keys import prompt_base_keys
from nabla_jax.decoding.scoring import RMFrame

__all__ = [
    "END_CONVERGED",
    "END_MAX_GENERATIONS",
    "END_STOPPED",
    "REFINEMENT_ENDS",
    "Counters",
    "Events",
    "Inserts",
    "RowState",
    "empty_state",
    "insert_rows",
]

END_STOPPED, END_CONVERGED, END_MAX_GENERATIONS = 0, 1, 2
REFINEMENT_ENDS = ("stopped", "converged", "max_generations")


class Counters(NamedTuple):
    """Per-row statistics, each ``[B]`` int32 (``model_calls`` is the sum of the ``*_calls``)."""

    generations: jax.Array  # rollouts, the initial one included
    rejections: jax.Array
    rollout_calls: jax.Array
    dto_calls: jax.Array
    probe_calls: jax.Array
    score_calls: jax.Array
    generated_tokens: jax.Array
    optimized_tokens: jax.Array  # window tokens × DTO steps
    rewarded_tokens: jax.Array  # RM input tokens of acceptance tests
    iterations: jax.Array
    refinements: jax.Array
    probes: jax.Array
    nonfinite: jax.Array  # refinements whose DTO loss went non-finite
    passes: jax.Array  # passes over the response started after the first (refine_passes)


class Events(NamedTuple):
    """One record per refinement (``[B, E]`` each, ``count [B]`` used): where, which tokens, the
    acceptance test's scores and verdict."""

    count: jax.Array
    position: jax.Array
    old_token: jax.Array
    new_token: jax.Array
    proposed: jax.Array  # bool
    accepted: jax.Array  # bool (meaningful when proposed)
    score_current: jax.Array  # float32 (meaningful when scored)
    score_proposed: jax.Array
    scored: jax.Array  # bool
    # What DTO did to the resample distribution (nabla_jax.decoding.diagnostics):
    kl: jax.Array  # float32 KL(refined ‖ original), nats
    dlogp: jax.Array  # float32 change in log-probability of the proposed token
    top1_changed: jax.Array  # bool
    topk_changed: jax.Array  # bool
    right_token: jax.Array  # int32 the oracle's right token, -1 = none
    p_right_before: jax.Array  # float32 its probability before / after DTO
    p_right_after: jax.Array
    right_top1_before: jax.Array  # bool it was the resample's top-1 before DTO
    p_new_before: jax.Array  # float32 the proposed token's probability before / after DTO
    p_new_after: jax.Array
    fidelity: jax.Array  # float32 Spearman of the gradient's estimates (NaN = not measured)


class RowState(NamedTuple):
    """Everything the loop carries (a pytree of ``[B, ...]`` arrays)."""

    prompt_ids: jax.Array  # [B, P] LM chat prompt, left-padded
    prompt_mask: jax.Array
    rm_prefix_ids: jax.Array  # [B, Q] RM template prefix (the prompt included), left-padded
    rm_prefix_mask: jax.Array
    rm_suffix_ids: jax.Array  # [B, S] RM template suffix, right-padded
    rm_suffix_mask: jax.Array
    base_key: jax.Array  # [B, 2] uint32 key data: the user's key folded with the prompt's id
    resp: Responses  # [B, L] tokens and per-position data
    lm_kv: KVState  # LM keys/values of prompt ++ response: [layers, B, P + L + K, ...]
    first_logits: jax.Array  # [B, V] LM logits at the prompt's end (predict response token 0)
    first_hidden: jax.Array  # [B, D] the hidden state behind them
    rm_cache: Any  # RM keys/values of template prefix ++ response: [layers, B, Q + 2L + S, ...]
    score: jax.Array  # [B] float32 reward of the current response
    committed: jax.Array  # [B] int32 final tokens
    live: jax.Array  # [B] bool: holds an unfinished prompt
    fresh: jax.Array  # [B] bool: inserted, first rollout still to make
    finished: jax.Array  # [B] bool: done, result waiting to be read
    refinement_end: jax.Array  # [B] int32 END_*
    counters: Counters
    events: Events

    @property
    def rm_frame(self) -> RMFrame:
        """The RM template around each row's response."""
        return RMFrame(self.rm_prefix_ids, self.rm_prefix_mask, self.rm_suffix_ids,
                       self.rm_suffix_mask)  # fmt: skip


class Inserts(NamedTuple):
    """Prompts to put into free slots (host-built arrays of the state's shapes)."""

    mask: Any  # [B] bool: slot b takes the prompt of this row
    prompt_ids: Any
    prompt_mask: Any
    rm_prefix_ids: Any
    rm_prefix_mask: Any
    rm_suffix_ids: Any
    rm_suffix_mask: Any
    prompt_key: Any  # [B] uint32 id of each prompt's content (folded into the user's key)


def _zeros_like_tree(tree):
    """Zeros shaped like every leaf of ``tree``."""
    return jax.tree.map(jnp.zeros_like, tree)


def empty_state(lm, rm, b, p, q, s, length, window, *, latents=False, events=None) -> RowState:
    """A state with ``B`` free slots (traceable; shapes from the arguments only).

    ``p`` / ``q`` / ``s``: prompt, RM template prefix and suffix buckets; ``length``: ``L``;
    ``window``: ``K``, the DTO window (the LM cache keeps ``K`` spare slots for it, the RM
    cache ``L + S`` for window, tail and suffix); ``events``: ``E``, refinements recorded per
    row (default ``L``, one pass over the response).
    """
    c = lm.config
    pad_id = c.pad_token_id if c.pad_token_id is not None else 0
    i32 = lambda *shape: jnp.zeros(shape, jnp.int32)
    counters = Counters(*[i32(b) for _ in Counters._fields])
    e = length if events is None else events
    events = Events(
        count=i32(b),
        position=i32(b, e),
        old_token=i32(b, e),
        new_token=i32(b, e),
        proposed=jnp.zeros((b, e), bool),
        accepted=jnp.zeros((b, e), bool),
        score_current=jnp.zeros((b, e), jnp.float32),
        score_proposed=jnp.zeros((b, e), jnp.float32),
        scored=jnp.zeros((b, e), bool),
        kl=jnp.zeros((b, e), jnp.float32),
        dlogp=jnp.zeros((b, e), jnp.float32),
        top1_changed=jnp.zeros((b, e), bool),
        topk_changed=jnp.zeros((b, e), bool),
        right_token=jnp.full((b, e), -1, jnp.int32),
        p_right_before=jnp.zeros((b, e), jnp.float32),
        p_right_after=jnp.zeros((b, e), jnp.float32),
        right_top1_before=jnp.zeros((b, e), bool),
        p_new_before=jnp.zeros((b, e), jnp.float32),
        p_new_after=jnp.zeros((b, e), jnp.float32),
        fidelity=jnp.full((b, e), jnp.nan, jnp.float32),
    )
    lm_slots = p + length + window
    return RowState(
        prompt_ids=i32(b, p),
        prompt_mask=i32(b, p),
        rm_prefix_ids=i32(b, q),
        rm_prefix_mask=i32(b, q),
        rm_suffix_ids=i32(b, s),
        rm_suffix_mask=i32(b, s),
        base_key=jax.random.key_data(jax.random.split(jax.random.key(0), b)),
        resp=empty_responses(
            b,
            length,
            pad_id=pad_id,
            vocab=None if latents else c.vocab_size,
            hidden=c.hidden_size if latents else None,
            stats=True,
            dtype=jnp.dtype(lm.dtype),
        ),
        lm_kv=KVState(lm.init_cache(b, lm_slots), i32(b, lm_slots)),
        first_logits=jnp.zeros((b, c.vocab_size), jnp.float32),
        first_hidden=jnp.zeros((b, c.hidden_size), jnp.dtype(lm.dtype)),
        rm_cache=rm.init_cache(b, q + 2 * length + s),
        score=jnp.zeros((b,), jnp.float32),
        committed=i32(b),
        live=jnp.zeros((b,), bool),
        fresh=jnp.zeros((b,), bool),
        finished=jnp.zeros((b,), bool),
        refinement_end=i32(b),
        counters=counters,
        events=events,
    )


def insert_rows(lm, state: RowState, ins: Inserts, key) -> RowState:
    """Reset the slots in ``ins.mask`` to fresh rows holding the inserted prompts (traceable).

    The prompts are forwarded into their rows' LM caches here (skipped when nothing is
    inserted). The response buffers are not cleared: a fresh row's first rollout rewrites them
    from slot 0.
    """

    def fresh(_):
        kv, logits, hidden = prefill_prompts(
            lm, ins.prompt_ids, ins.prompt_mask, state.lm_kv.mask.shape[1]
        )
        return kv, logits, hidden.astype(state.first_hidden.dtype)

    def keep(_):
        return state.lm_kv, state.first_logits, state.first_hidden

    kv, logits, hidden = jax.lax.cond(jnp.any(ins.mask), fresh, keep, None)
    base = prompt_base_keys(key, ins.prompt_key)
    new = state._replace(
        prompt_ids=ins.prompt_ids,
        prompt_mask=ins.prompt_mask,
        rm_prefix_ids=ins.rm_prefix_ids,
        rm_prefix_mask=ins.rm_prefix_mask,
        rm_suffix_ids=ins.rm_suffix_ids,
        rm_suffix_mask=ins.rm_suffix_mask,
        base_key=jax.random.key_data(base),
        lm_kv=kv,
        first_logits=logits,
        first_hidden=hidden,
        score=jnp.zeros_like(state.score),
        committed=jnp.zeros_like(state.committed),
        live=jnp.ones_like(state.live),
        fresh=jnp.ones_like(state.fresh),
        finished=jnp.zeros_like(state.finished),
        refinement_end=jnp.zeros_like(state.refinement_end),
        counters=_zeros_like_tree(state.counters),
        events=_zeros_like_tree(state.events),
    )
    return select_rows(ins.mask, new, state)
