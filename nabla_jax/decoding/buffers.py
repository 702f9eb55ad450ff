"""The decode's device buffers: response slots, the LM key/value cache, and prefill.

:class:`Responses` holds ``B`` rows of ``L`` response slots (with the per-position logits,
hidden states and statistics the ∇-Reasoner loop selects from); :class:`KVState` an LM cache
with its valid-slot mask; :func:`prefill_prompts` fills a fresh cache with the prompts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.models.model import default_positions, last_valid_index

__all__ = [
    "KVState",
    "Responses",
    "empty_responses",
    "position_stats",
    "prefill_prompts",
    "select_rows",
]


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
