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
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.sampling import (
    SamplingConfig,
    apply_temperature,
    top_k_filter,
    top_p_filter,
)
from nabla_jax.decoding.stopping import STOP_EOS, STOP_LENGTH, STOP_STRING, hits_eos, hits_stop
from nabla_jax.models.model import default_positions, last_valid_index

__all__ = [
    "Responses",
    "SamplingParams",
    "SamplingProgram",
    "TRACE_COUNTS",
    "KVState",
    "continue_responses",
    "empty_responses",
    "position_stats",
    "prefill_prompts",
    "select_rows",
]

# Incremented each time a rollout program is traced (= compiled); tests count compiles with it.
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class SamplingProgram:
    """The static part of sampling: greedy, and which filters exist at all."""

    greedy: bool
    use_top_k: bool
    use_top_p: bool

    @classmethod
    def of(cls, cfg: SamplingConfig) -> SamplingProgram:
        return cls(cfg.greedy, cfg.top_k > 0, cfg.top_p < 1)


class SamplingParams(NamedTuple):
    """The run-time part of sampling (scalars): temperature, top_k, top_p."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array

    @classmethod
    def of(cls, cfg: SamplingConfig) -> SamplingParams:
        import numpy as np

        return cls(np.float32(cfg.temperature), np.int32(cfg.top_k), np.float32(cfg.top_p))


class Responses(NamedTuple):
    """Response buffers of ``B`` rows, ``L`` slots each (a pytree; optional parts are None).

    Attributes:
      tokens: ``[B, L]`` int32 ids; slots at or past ``length`` hold stale ids or the pad id.
      length: ``[B]`` int32 tokens in the response (an EOS included).
      stop: ``[B]`` int32 why the last rollout ended: 0 length, 1 EOS, 2 stop string.
      logits: ``[B, L, V]`` float32 raw next-token logits each token was sampled from, or None.
      hidden: ``[B, L, D]`` last-layer hidden states behind those logits, or None.
      top1: ``[B, L]`` top-1 probability; entropy: ``[B, L]`` nats; argmax: ``[B, L]`` int32
        argmax of those logits — or None (all three together).
    """

    tokens: jax.Array
    length: jax.Array
    stop: jax.Array
    logits: jax.Array | None = None
    hidden: jax.Array | None = None
    top1: jax.Array | None = None
    entropy: jax.Array | None = None
    argmax: jax.Array | None = None


def empty_responses(b, length, *, pad_id=0, vocab=None, hidden=None, stats=False, dtype=None):
    """Zeroed :class:`Responses`: ``vocab`` keeps logits ``[B, L, V]``, ``hidden`` keeps hidden
    states ``[B, L, D]`` (of ``dtype``), ``stats`` keeps top-1 / entropy / argmax."""
    z = lambda *shape, dt=jnp.float32: jnp.zeros(shape, dt)
    return Responses(
        tokens=jnp.full((b, length), pad_id, jnp.int32),
        length=z(b, dt=jnp.int32),
        stop=z(b, dt=jnp.int32),
        logits=None if vocab is None else z(b, length, vocab),
        hidden=None if hidden is None else z(b, length, hidden, dt=dtype or jnp.float32),
        top1=z(b, length) if stats else None,
        entropy=z(b, length) if stats else None,
        argmax=z(b, length, dt=jnp.int32) if stats else None,
    )


def position_stats(logits):
    """Per row of ``[..., V]``: top-1 probability, entropy (nats), argmax id."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    return jnp.max(p, axis=-1), entropy, jnp.argmax(logits, axis=-1).astype(jnp.int32)


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


def _set_rows(buffer, index, value, rows):
    """``buffer[b, index[b]] = value[b]`` for the rows in ``rows [B]`` (others unchanged)."""
    b = jnp.arange(buffer.shape[0])
    old = buffer[b, index]
    cond = rows.reshape(rows.shape + (1,) * (value.ndim - 1))
    return buffer.at[b, index].set(jnp.where(cond, value.astype(buffer.dtype), old))


class KVState(NamedTuple):
    """An LM key/value cache of ``B`` rows with its valid-slot mask.

    Slots: ``[0, P)`` the prompt, ``P + j`` response token ``j``, and at least one spare slot
    at the end (the last one is scratch: idle rows write there). ``mask [B, S]`` marks the slots
    that hold real keys/values; a response's last token has none until it is forwarded.
    """

    cache: object
    mask: jax.Array


def select_rows(rows, new, old):
    """Per leaf of two like pytrees: ``new`` in the rows of ``rows [B]``, else ``old``; a
    ``KVCache`` leaf ``[layers, B, ...]`` is selected along its batch axis."""
    from nabla_jax.models.layers import KVCache

    def pick(n, o, axis):
        shape = [1] * o.ndim
        shape[axis] = rows.shape[0]
        return jnp.where(rows.reshape(shape), n, o)

    def walk(n, o):
        if isinstance(o, KVCache):
            return KVCache(pick(n.k, o.k, 1), pick(n.v, o.v, 1))
        return jax.tree.map(lambda a, c: pick(a, c, 0), n, o)

    is_cache = lambda x: isinstance(x, KVCache)
    return jax.tree.map(walk, new, old, is_leaf=is_cache)


def prefill_prompts(lm, prompt_ids, prompt_mask, slots: int):
    """Forward the prompts ``[B, P]`` into a fresh cache of ``slots`` slots (traceable).

    Returns ``(KVState, logits [B, V] float32, hidden [B, D])`` — the logits and hidden state
    at each prompt's last real token, which predict response token 0.
    """
    b, p = prompt_ids.shape
    mask = prompt_mask.astype(jnp.int32)
    key_mask = jnp.concatenate([mask, jnp.zeros((b, slots - p), jnp.int32)], axis=1)
    out = lm.forward(
        prompt_ids,
        mask,
        position_ids=default_positions(mask),
        cache=lm.init_cache(b, slots),
        write_index=0,
        key_mask=key_mask,
    )
    hidden = jnp.take_along_axis(out.hidden, last_valid_index(mask)[:, None, None], 1)[:, 0]
    return KVState(out.cache, key_mask), lm.head_logits(hidden).astype(jnp.float32), hidden


class _Loop(NamedTuple):
    t: jax.Array  # step: forwards response token start+t-1, draws token start+t
    resp: Responses
    done: jax.Array  # [B]
    window: jax.Array  # [B, M] last generated tokens (-1 = none), for stop-sequence matching
    kv: KVState


def continue_responses(
    lm, kv: KVState, prompt_width: int, prompt_len, first, resp: Responses, start, limit, active,
    keys, params, tables, prog: SamplingProgram, pad_id: int = 0, forced=None,
) -> tuple[Responses, KVState, jax.Array]:  # fmt: skip
    """Keep each active row's first ``start[b]`` response tokens and sample the rest (traceable).

    The cache must hold the keys/values of the prompt and of response tokens ``[0, start-1)``;
    each step forwards one token per row (first token ``start-1``, whose logits predict token
    ``start``), so there is no prefill. A row with ``start == 0`` draws its first token from
    ``first`` (the prompt's last logits and hidden state, from :func:`prefill_prompts`).

    Args:
      lm: a ``CausalLM``.
      kv: the rows' :class:`KVState` (``S >= P + L + 1`` slots).
      prompt_width: ``P``, the prompt slots (response token ``j`` lives in slot ``P + j``).
      prompt_len: ``[B]`` real prompt tokens (positions continue from there).
      first: ``(logits [B, V], hidden [B, D])`` predicting response token 0.
      resp: :class:`Responses` with ``L`` slots; an active row's tokens ``[0, start)`` are kept.
      start: ``[B]`` int32 first response index to generate.
      limit: ``[B]`` int32 response length limit (``<= L``).
      active: ``[B]`` bool rows to roll out; the others are returned unchanged.
      keys: ``[B]`` PRNG keys (ignored when greedy).
      params, prog: sampling values (run-time) and structure (static).
      tables: :class:`~nabla_jax.decoding.stopping.StopTables`.
      pad_id: id written past a row's new length.
      forced: optional ``(tokens [B, L], until [B])``: response slots ``[start, until]`` take
        these tokens instead of drawn ones (forwarded and counted like drawn tokens; the
        stopping rules apply to them too).

    Returns:
      ``(responses, kv, calls [B])``: updated buffers (``length`` = ``start`` + generated tokens
      for active rows), the cache with every token but each response's last forwarded, and the
      model calls of each row (its generated tokens).
    """
    b, n = resp.tokens.shape
    slots = jnp.arange(n)[None, :]
    scratch = kv.mask.shape[1] - 1
    p_len = prompt_width
    first_logits, first_hidden = first
    forced_tokens, forced_until = (None, None) if forced is None else forced
    fresh_tokens = jnp.where(active[:, None] & (slots >= start[:, None]), pad_id, resp.tokens)
    resp = resp._replace(tokens=fresh_tokens)

    def step(state: _Loop) -> _Loop:
        t, r = state.t, state.resp
        idx = start + t - 1  # the token forwarded this step
        forward = ~state.done & (idx >= 0)
        slot = jnp.where(forward, p_len + idx, scratch)
        tok_in = jnp.take_along_axis(r.tokens, jnp.clip(idx, 0, n - 1)[:, None], axis=1)
        mask = _set_rows(state.kv.mask, slot, jnp.ones((b,), jnp.int32), forward)
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
            tokens=_set_rows(r.tokens, j, tok, writing),
            length=jnp.where(writing, start + t + 1, r.length),
        )
        if r.logits is not None:
            r = r._replace(logits=_set_rows(r.logits, j, logits, writing))
        if r.hidden is not None:
            r = r._replace(hidden=_set_rows(r.hidden, j, hidden, writing))
        if r.top1 is not None:
            top1, ent, amax = position_stats(logits)
            r = r._replace(
                top1=_set_rows(r.top1, j, top1, writing),
                entropy=_set_rows(r.entropy, j, ent, writing),
                argmax=_set_rows(r.argmax, j, amax, writing),
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
