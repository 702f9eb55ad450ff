"""Rollouts in fixed shapes: continue responses from any position on a kept KV cache.

The core, :func:`continue_responses`, works in *response coordinates*: each row has a prompt
(``P`` slots) and a response buffer ``[L]``; the row keeps its first ``start[b]`` response tokens
and samples the rest, token ``j``'s keys/values landing in slot ``P + j`` of the row's cache
(per-row write slots), until EOS, a stop sequence or its length limit. The cache comes in
holding the prompt (:func:`prefill_prompts`) and the kept tokens, so a rollout is only a
``lax.while_loop`` that forwards one token per row per step — no prefill; every shape depends on
``B``, ``P`` and ``L`` only. The same core makes the ∇-Reasoner decoder's first rollouts
(``start = 0``) and its proposals (``start`` = after the resampled token, on a copy of the
current response's cache) inside its compiled loop, and the baselines' samples.

Per-row randomness: generated token ``t`` of row ``b`` (counting from ``start``) is drawn with
``fold_in(keys[b], t)``, so a row's tokens do not depend on its neighbours. Temperature, top-k
and top-p are run-time values; whether sampling is greedy or filtered is static.

Model calls: one per generated token.

Host API: :func:`generate_padded` (already padded prompts) and :func:`rollout` (id lists).
"""

from __future__ import annotations

import collections
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.buffers import KVState, Responses, position_stats
from nabla_jax.decoding.sampling import (
    SamplingParams,
    SamplingProgram,
    apply_temperature,
    top_k_filter,
    top_p_filter,
)
from nabla_jax.decoding.stopping import STOP_EOS, STOP_LENGTH, STOP_STRING, hits_eos, hits_stop
from nabla_jax.runtime.rows import put_at

__all__ = ["TRACE_COUNTS", "PromptCache", "Sampler", "Span", "continue_responses"]

# Incremented each time a rollout program is traced (= compiled); tests count compiles with it.
TRACE_COUNTS: collections.Counter = collections.Counter()


def _draw(keys, t, logits, params: SamplingParams, prog: SamplingProgram):
    """Token ``t`` of each row from ``logits [B, V]`` with the key ``fold_in(keys[b], t)``."""
    if prog.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = apply_temperature(logits, params.temperature)
    if prog.use_top_k:
        filtered = top_k_filter(filtered, params.top_k)
    if prog.use_top_p:
        filtered = top_p_filter(filtered, params.top_p)
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
    drawn = jax.vmap(lambda k, f: jax.random.categorical(k, f))(row_keys, filtered)
    return drawn.astype(jnp.int32)


class _Loop(NamedTuple):
    t: jax.Array  # step: forwards response token start+t-1, draws token start+t
    resp: Responses
    done: jax.Array  # [B]
    window: jax.Array  # [B, M] last generated tokens (-1 = none), for stop-sequence matching
    kv: KVState


class PromptCache(NamedTuple):
    """The prompt side of a rollout: what the rows continue from.

    Attributes:
      kv: the rows' :class:`KVState` (``S >= P + L + 1`` slots) holding the prompt's keys/values
        and those of the kept response tokens.
      width: ``P``, the prompt slots (response token ``j`` lives in slot ``P + j``; static).
      length: ``[B]`` real prompt tokens (positions continue from there).
      first_logits: ``[B, V]`` float32 logits predicting response token 0.
      first_hidden: ``[B, D]`` the hidden state behind them.
    """

    kv: KVState
    width: int
    length: jax.Array
    first_logits: jax.Array
    first_hidden: jax.Array


class Span(NamedTuple):
    """Which response slots of which rows a rollout generates.

    Attributes:
      resp: :class:`Responses` with ``L`` slots; an active row's tokens ``[0, start)`` are kept.
      start: ``[B]`` int32 first response index to generate.
      limit: ``[B]`` int32 response length limit (``<= L``).
      active: ``[B]`` bool rows to roll out; the others are returned unchanged.
      keys: ``[B]`` PRNG keys (ignored when greedy).
      forced: optional ``(tokens [B, L], until [B])``: response slots ``[start, until]`` take
        these tokens instead of drawn ones (forwarded and counted like drawn tokens; the
        stopping rules apply to them too).
    """

    resp: Responses
    start: jax.Array
    limit: jax.Array
    active: jax.Array
    keys: jax.Array
    forced: tuple | None = None


class Sampler(NamedTuple):
    """How tokens are drawn and when a response ends.

    Attributes:
      params: sampling values (run-time); prog: its structure (static).
      tables: :class:`~nabla_jax.decoding.stopping.StopTables`.
      pad_id: id written past a row's new length (static).
    """

    params: SamplingParams
    prog: SamplingProgram
    tables: object
    pad_id: int = 0


def continue_responses(
    lm, *, prompt: PromptCache, span: Span, sampler: Sampler
) -> tuple[Responses, KVState, jax.Array]:
    """Keep each active row's first ``start[b]`` response tokens and sample the rest (traceable).

    The cache must hold the keys/values of the prompt and of response tokens ``[0, start-1)``;
    each step forwards one token per row (first token ``start-1``, whose logits predict token
    ``start``), so there is no prefill. A row with ``start == 0`` draws its first token from
    ``first`` (the prompt's last logits and hidden state, from :func:`prefill_prompts`).

    Args:
      lm: a ``CausalLM``.
      prompt, span, sampler: see :class:`PromptCache`, :class:`Span`, :class:`Sampler`.

    Returns:
      ``(responses, kv, calls [B])``: updated buffers (``length`` = ``start`` + generated tokens
      for active rows), the cache with every token but each response's last forwarded, and the
      model calls of each row (its generated tokens).
    """
    kv, p_len, prompt_len = prompt.kv, prompt.width, prompt.length
    first_logits, first_hidden = prompt.first_logits, prompt.first_hidden
    resp, start, limit, active, keys, forced = span
    params, prog, tables, pad_id = sampler
    b, n = resp.tokens.shape
    slots = jnp.arange(n)[None, :]
    scratch = kv.mask.shape[1] - 1
    forced_tokens, forced_until = (None, None) if forced is None else forced
    fresh_tokens = jnp.where(active[:, None] & (slots >= start[:, None]), pad_id, resp.tokens)
    resp = resp._replace(tokens=fresh_tokens)

    def step(state: _Loop) -> _Loop:
        t, r = state.t, state.resp
        idx = start + t - 1  # the token forwarded this step
        forward = ~state.done & (idx >= 0)
        slot = jnp.where(forward, p_len + idx, scratch)
        tok_in = jnp.take_along_axis(r.tokens, jnp.clip(idx, 0, n - 1)[:, None], axis=1)
        mask = put_at(state.kv.mask, slot, jnp.ones((b,), jnp.int32), forward)
        out = lm.forward(
            tok_in,
            jnp.ones((b, 1), jnp.int32),
            position_ids=(prompt_len + jnp.maximum(idx, 0))[:, None],
            cache=state.kv.cache,
            write_index=slot,
            key_mask=mask,
        )
        before = (idx < 0)[:, None]  # a fresh row: token 0 comes from the prompt's logits
        hidden = jnp.where(before, first_hidden.astype(out.hidden.dtype), out.hidden[:, 0])
        logits = jnp.where(before, first_logits, lm.head_logits(out.hidden[:, 0]))
        state = state._replace(kv=KVState(out.cache, mask))
        return _record(state, logits.astype(jnp.float32), hidden)

    def _record(state: _Loop, logits, hidden) -> _Loop:
        t, r = state.t, state.resp
        j = jnp.minimum(start + t, n - 1)  # response index of the drawn token (clamped)
        writing = ~state.done
        tok = _draw(keys, t, logits, params, prog)
        if forced is not None:  # teacher-forced tokens: kept, not drawn
            given = jnp.take_along_axis(forced_tokens, j[:, None], axis=1)[:, 0]
            tok = jnp.where(j <= forced_until, given, tok)
        r = r._replace(
            tokens=put_at(r.tokens, j, tok, writing),
            length=jnp.where(writing, start + t + 1, r.length),
        )
        if r.logits is not None:
            r = r._replace(logits=put_at(r.logits, j, logits, writing))
        if r.hidden is not None:
            r = r._replace(hidden=put_at(r.hidden, j, hidden, writing))
        if r.top1 is not None:
            top1, ent, amax = position_stats(logits)
            r = r._replace(
                top1=put_at(r.top1, j, top1, writing),
                entropy=put_at(r.entropy, j, ent, writing),
                argmax=put_at(r.argmax, j, amax, writing),
            )
        window = jnp.where(
            writing[:, None],
            jnp.concatenate([state.window[:, 1:], tok[:, None]], axis=1),
            state.window,
        )
        hit_eos = writing & hits_eos(tok, tables)
        hit_stop = writing & hits_stop(window, tables) & ~hit_eos
        stop = jnp.where(hit_eos, STOP_EOS, jnp.where(hit_stop, STOP_STRING, r.stop))
        full = writing & (start + t + 1 >= limit)
        stop = jnp.where(full & ~hit_eos & ~hit_stop, STOP_LENGTH, stop)
        done = state.done | hit_eos | hit_stop | full
        return state._replace(t=t + 1, resp=r._replace(stop=stop), done=done, window=window)

    init = _Loop(
        t=jnp.zeros((), jnp.int32),
        resp=resp,
        done=~active | (start >= limit),
        window=jnp.full((b, tables.window), -1, jnp.int32),
        kv=kv,
    )

    def cond(state: _Loop):
        return (state.t < n) & ~jnp.all(state.done)

    state = jax.lax.while_loop(cond, step, init)
    calls = jnp.where(active, jnp.maximum(state.resp.length - start, 0), 0)
    return state.resp, state.kv, calls
