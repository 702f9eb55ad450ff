"""Rollouts in fixed shapes: continue responses from any position with one KV-cached program.

The core, :func:`continue_responses`, works in *response coordinates*: each row has a prompt
``[P]`` (any 0/1 mask) and a response buffer ``[L]``; the row keeps its first ``start[b]``
response tokens and samples the rest, token ``j`` landing in slot ``P + j`` of a ``P + L`` slot
KV cache (per-row write slots), until EOS, a stop sequence or its length limit. One prefill over
all ``P + L`` slots (the kept tokens are real, the rest masked) and one ``lax.while_loop`` that
forwards one token per step; every shape depends on ``B``, ``P`` and ``L`` only. The same core
makes the ∇-Reasoner decoder's first rollouts (``start = 0``) and its proposals (``start`` =
after the resampled token) inside its compiled loop, and the baselines' samples.

Per-row randomness: generated token ``t`` of row ``b`` (counting from ``start``) is drawn with
``fold_in(keys[b], t)``, so a row's tokens do not depend on its neighbours. Temperature, top-k
and top-p are run-time values; whether sampling is greedy or filtered is static.

Model calls: one per generated token (the prefill produces the first).

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
    "continue_responses",
    "empty_responses",
    "position_stats",
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


class _Loop(NamedTuple):
    t: jax.Array  # generated tokens so far (scalar): the next one is t
    resp: Responses
    done: jax.Array  # [B]
    window: jax.Array  # [B, M] last generated tokens (-1 = none), for stop-sequence matching
    cache: object
    key_mask: jax.Array  # [B, P + L]


def continue_responses(
    lm, prompt_ids, prompt_mask, resp: Responses, start, limit, active, keys, params, tables,
    prog: SamplingProgram, pad_id: int = 0,
) -> tuple[Responses, jax.Array]:  # fmt: skip
    """Keep each active row's first ``start[b]`` response tokens and sample the rest (traceable).

    Args:
      lm: a ``CausalLM``.
      prompt_ids, prompt_mask: ``[B, P]`` prompts (at least one real token per active row).
      resp: :class:`Responses` with ``L`` slots; an active row's tokens ``[0, start)`` are kept.
      start: ``[B]`` int32 first response index to generate.
      limit: ``[B]`` int32 response length limit (``<= L``): a row stops at ``limit`` tokens.
      active: ``[B]`` bool rows to roll out; the others are returned unchanged.
      keys: ``[B]`` PRNG keys (ignored when greedy).
      params, prog: sampling values (run-time) and structure (static).
      tables: :class:`~nabla_jax.decoding.stopping.StopTables`.
      pad_id: id written past a row's new length.

    Returns:
      ``(responses, calls [B])``: updated buffers (``length`` = ``start`` + generated tokens for
      active rows) and the model calls of each row (its generated tokens).
    """
    b, p_len = prompt_ids.shape
    n = resp.tokens.shape[1]
    slots = jnp.arange(n)[None, :]
    prompt_len = jnp.sum(prompt_mask.astype(jnp.int32), axis=-1)
    kept = (slots < start[:, None]).astype(jnp.int32)
    key_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), kept], axis=1)
    ids = jnp.concatenate([prompt_ids, jnp.where(kept > 0, resp.tokens, pad_id)], axis=1)
    out = lm.forward(
        ids,
        key_mask,
        position_ids=default_positions(key_mask),
        cache=lm.init_cache(b, p_len + n),
        write_index=0,
        key_mask=key_mask,
    )
    hidden0 = jnp.take_along_axis(out.hidden, last_valid_index(key_mask)[:, None, None], 1)[:, 0]
    logits0 = lm.head_logits(hidden0).astype(jnp.float32)
    fresh_tokens = jnp.where(active[:, None] & (slots >= start[:, None]), pad_id, resp.tokens)
    resp = resp._replace(tokens=fresh_tokens)

    def record(state: _Loop, logits, hidden) -> _Loop:
        t, r = state.t, state.resp
        j = jnp.minimum(start + t, n - 1)  # response index of this token (clamped when done)
        writing = ~state.done
        tok = _draw(keys, t, logits, params, prog)
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
        cache=out.cache,
        key_mask=key_mask,
    )
    state = record(init, logits0, hidden0)

    def cond(state: _Loop):
        return (state.t < n) & ~jnp.all(state.done)

    def body(state: _Loop) -> _Loop:
        # Forward the token drawn last (response index start+t-1) to get the logits of the next.
        prev = jnp.minimum(start + state.t - 1, n - 1)
        slot = p_len + prev
        tok = jnp.take_along_axis(state.resp.tokens, prev[:, None], axis=1)  # [B, 1]
        key_mask = _set_rows(state.key_mask, slot, jnp.ones((b,), jnp.int32), ~state.done)
        step = lm.forward(
            tok,
            jnp.ones((b, 1), jnp.int32),
            position_ids=(prompt_len + prev)[:, None],
            cache=state.cache,
            write_index=slot,
            key_mask=key_mask,
        )
        hidden = step.hidden[:, 0]
        logits = lm.head_logits(hidden).astype(jnp.float32)
        return record(state._replace(cache=step.cache, key_mask=key_mask), logits, hidden)

    state = jax.lax.while_loop(cond, body, state)
    calls = jnp.where(active, jnp.maximum(state.resp.length - start, 0), 0)
    return state.resp, calls
