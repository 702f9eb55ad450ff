"""Batched rollouts: left-padded prompts, one KV-cached prefill, a compiled decode loop.

:func:`rollout` takes ``B`` prompts (token-id lists of any lengths), pads them into a bucketed
``[B, P]`` array and generates up to ``max_new_tokens`` tokens per row with
:func:`generate_padded`: one ``jax.jit`` program holds the prefill (``lm.forward`` with a cache of
``P + N`` slots) and a ``lax.while_loop`` that forwards one token per step and stops when every row
is done or the budget is spent. The model is an *argument* of the jitted function (its params
are pytree leaves), never a closure, and every shape is static: ``P`` and ``N`` are rounded up by
:func:`bucket_length`, the per-row budget is a run-time array, so prompts of many lengths and
budgets compile a handful of programs.

Per-row randomness: token ``i`` of row ``b`` is drawn with ``fold_in(keys[b], i)``, so a row's
tokens do not depend on its position in the batch or on its neighbours. ``temperature == 0`` is
greedy.

Stopping: a row is done after an EOS id (the EOS is kept in ``tokens`` and counted in ``lengths``),
after its budget, or after a stop string. Stop strings are detected during decoding by matching the
generated token suffix against each stop string's standalone tokenization; a stop string that the
model spells with other tokens (BPE merges across its boundary, a leading space...) is missed on
device — the row runs on — but the host still trims ``texts`` at its first occurrence and reports
``"stop_string"``. Only generated tokens are matched (not the prompt's tail).

Model calls follow ALGORITHM.md §3: one per generated token (the prefill produces the first).
"""

from __future__ import annotations

import collections
import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.decoding.sampling import (
    SamplingConfig,
    apply_temperature,
    top_k_filter,
    top_p_filter,
)
from nabla_jax.models.model import default_positions, last_valid_index

__all__ = [
    "STOP_EOS",
    "STOP_LENGTH",
    "STOP_REASONS",
    "STOP_STRING",
    "PaddedRollout",
    "RolloutResult",
    "TRACE_COUNTS",
    "bucket_length",
    "generate_padded",
    "pad_prompts",
    "rollout",
]

STOP_LENGTH, STOP_EOS, STOP_STRING = 0, 1, 2
STOP_REASONS = ("length", "eos", "stop_string")

# Filler of the EOS / stop tables (token ids are >= 0; -1 marks "no token yet" in the window).
_NEVER, _ANY = -3, -2

# Incremented each time the decode program is traced (= compiled); tests count compiles with it.
TRACE_COUNTS: collections.Counter = collections.Counter()

DEFAULT_MIN_BUCKET = 16


# --------------------------------------------------------------------------------------------
# Buckets and padding
# --------------------------------------------------------------------------------------------


def bucket_length(n: int, buckets: int | Sequence[int] | None = None) -> int:
    """Round a length up to a bucket so that mixed lengths share compiled programs.

    Args:
      n: a length >= 1.
      buckets: None (default): the next power of two, at least 16. An int ``m``: the next
        multiple of ``m``. A sequence: its smallest entry ``>= n``.

    Returns:
      The bucketed length (``>= n``).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"bucket_length needs an int length >= 1, got {n!r}")
    n = int(n)
    if buckets is None:
        return max(DEFAULT_MIN_BUCKET, 1 << (n - 1).bit_length())
    if isinstance(buckets, numbers.Integral) and not isinstance(buckets, bool):
        if buckets < 1:
            raise ValueError(f"an int bucket size must be >= 1, got {buckets!r}")
        return -(-n // int(buckets)) * int(buckets)
    fitting = [int(b) for b in buckets if int(b) >= n]
    if not fitting:
        raise ValueError(
            f"length {n} exceeds every bucket in {tuple(buckets)}; add a larger bucket"
        )
    return min(fitting)


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
    """Left-pad token-id lists into ``ids [B, length]`` int32 and ``mask [B, length]`` int32."""
    b = len(prompts)
    ids = np.full((b, length), pad_id, np.int32)
    mask = np.zeros((b, length), np.int32)
    for row, p in enumerate(prompts):
        if len(p) > length:
            raise ValueError(f"prompt {row} has {len(p)} tokens, more than the pad length {length}")
        if len(p):
            ids[row, length - len(p) :] = np.asarray(p, np.int32)
            mask[row, length - len(p) :] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------
# The compiled program
# --------------------------------------------------------------------------------------------


class PaddedRollout(NamedTuple):
    """Device-side result of :func:`generate_padded` (a pytree of arrays).

    Attributes:
      tokens: ``[B, N]`` int32 generated ids; positions ``>= lengths[b]`` hold ``pad_id``.
      lengths: ``[B]`` int32 generated tokens, EOS included.
      logits: ``[B, N, V]`` float32 raw next-token logits each token was sampled from (zeros past
        ``lengths``), or None.
      hidden: ``[B, N, D]`` last-layer hidden states that produced those logits, or None.
      stop: ``[B]`` int32 stop code: ``STOP_LENGTH`` (0), ``STOP_EOS`` (1), ``STOP_STRING`` (2).
      model_calls: ``[B]`` int32 model calls per row (one per generated token).
    """

    tokens: jax.Array
    lengths: jax.Array
    logits: jax.Array | None
    hidden: jax.Array | None
    stop: jax.Array
    model_calls: jax.Array


class _Loop(NamedTuple):
    i: jax.Array  # index of the next token to draw
    tokens: jax.Array
    logits: jax.Array | None
    hidden: jax.Array | None
    lengths: jax.Array
    done: jax.Array
    stop: jax.Array
    window: jax.Array  # last M generated tokens (-1 = none), for stop-sequence matching
    cache: Any
    key_mask: jax.Array


def _draw(keys, i, logits, temperature, top_k, top_p, *, greedy, use_top_k, use_top_p):
    """Token ``i`` of each row from ``logits [B, V]`` with the row's key ``fold_in(keys[b], i)``."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = apply_temperature(logits, temperature)
    if use_top_k:
        filtered = top_k_filter(filtered, top_k)
    if use_top_p:
        filtered = top_p_filter(filtered, top_p)
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
    drawn = jax.vmap(lambda k, f: jax.random.categorical(k, f))(row_keys, filtered)
    return drawn.astype(jnp.int32)


def _generate_impl(
    lm,
    ids,
    mask,
    keys,
    budget,
    temperature,
    top_k,
    top_p,
    eos_table,
    stop_table,
    *,
    num_new: int,
    greedy: bool,
    use_top_k: bool,
    use_top_p: bool,
    return_logits: bool,
    return_hidden: bool,
    pad_id: int,
) -> PaddedRollout:
    TRACE_COUNTS["generate"] += 1
    b, p_len = ids.shape
    mask = mask.astype(jnp.int32)
    prompt_len = jnp.sum(mask, axis=-1)

    # Prefill: all prompt slots at once; the generated slots P.. are empty (masked) for now.
    cache = lm.init_cache(b, p_len + num_new)
    key_mask = jnp.concatenate([mask, jnp.zeros((b, num_new), jnp.int32)], axis=1)
    out = lm.forward(
        ids,
        mask,
        position_ids=default_positions(mask),
        cache=cache,
        write_index=0,
        key_mask=key_mask,
    )
    last = last_valid_index(mask)
    hidden0 = jnp.take_along_axis(out.hidden, last[:, None, None], axis=1)[:, 0]
    logits0 = lm.head_logits(hidden0).astype(jnp.float32)

    m = stop_table.shape[1]

    def record(state: _Loop, logits, hidden) -> _Loop:
        i = state.i
        tok = _draw(
            keys,
            i,
            logits,
            temperature,
            top_k,
            top_p,
            greedy=greedy,
            use_top_k=use_top_k,
            use_top_p=use_top_p,
        )
        active = ~state.done
        tok = jnp.where(active, tok, pad_id)
        tokens = jax.lax.dynamic_update_index_in_dim(state.tokens, tok, i, axis=1)
        new_logits = state.logits
        if new_logits is not None:
            val = jnp.where(active[:, None], logits, 0.0)
            new_logits = jax.lax.dynamic_update_index_in_dim(new_logits, val, i, axis=1)
        new_hidden = state.hidden
        if new_hidden is not None:
            val = jnp.where(active[:, None], hidden, 0).astype(new_hidden.dtype)
            new_hidden = jax.lax.dynamic_update_index_in_dim(new_hidden, val, i, axis=1)
        lengths = state.lengths + active.astype(jnp.int32)
        window = jnp.where(
            active[:, None],
            jnp.concatenate([state.window[:, 1:], tok[:, None]], axis=1),
            state.window,
        )
        hit_eos = active & jnp.any(tok[:, None] == eos_table[None, :], axis=-1)
        # stop_table [S, M]: right-aligned sequences, _ANY to the left of each (an unused row is
        # all _NEVER); a row matches when every non-_ANY entry equals the generated suffix.
        match = (window[:, None, :] == stop_table[None]) | (stop_table[None] == _ANY)
        hit_stop = active & jnp.any(jnp.all(match, axis=-1), axis=-1) & ~hit_eos
        stop = jnp.where(hit_eos, STOP_EOS, jnp.where(hit_stop, STOP_STRING, state.stop))
        done = state.done | hit_eos | hit_stop | (lengths >= budget)
        return state._replace(
            i=i + 1,
            tokens=tokens,
            logits=new_logits,
            hidden=new_hidden,
            lengths=lengths,
            done=done,
            stop=stop,
            window=window,
        )

    init = _Loop(
        i=jnp.zeros((), jnp.int32),
        tokens=jnp.full((b, num_new), pad_id, jnp.int32),
        logits=jnp.zeros((b, num_new, logits0.shape[-1]), jnp.float32) if return_logits else None,
        hidden=jnp.zeros((b, num_new, hidden0.shape[-1]), hidden0.dtype) if return_hidden else None,
        lengths=jnp.zeros((b,), jnp.int32),
        done=budget <= 0,
        stop=jnp.full((b,), STOP_LENGTH, jnp.int32),
        window=jnp.full((b, m), -1, jnp.int32),
        cache=out.cache,
        key_mask=key_mask,
    )
    state = record(init, logits0, hidden0)

    def cond(state: _Loop):
        return (state.i < num_new) & ~jnp.all(state.done)

    def body(state: _Loop) -> _Loop:
        # Forward the token drawn last (index i-1, slot P+i-1) to get the logits of token i.
        prev = state.i - 1
        slot = p_len + prev
        tok = jax.lax.dynamic_index_in_dim(state.tokens, prev, axis=1)  # [B, 1]
        key_mask = jax.lax.dynamic_update_index_in_dim(
            state.key_mask, jnp.ones((b,), jnp.int32), slot, axis=1
        )
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
    return PaddedRollout(
        tokens=state.tokens,
        lengths=state.lengths,
        logits=state.logits,
        hidden=state.hidden,
        stop=state.stop,
        model_calls=state.lengths,
    )


_STATIC = (
    "num_new",
    "greedy",
    "use_top_k",
    "use_top_p",
    "return_logits",
    "return_hidden",
    "pad_id",
)
_generate = jax.jit(_generate_impl, static_argnames=_STATIC)


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def _tables(eos_ids, stop_ids):
    """EOS ids ``[E]`` and right-aligned stop sequences ``[S, M]`` as run-time arrays.

    Sizes are rounded up (E, S to multiples of 4, M of 8) so that different EOS sets and stop
    strings share one compiled program.
    """
    eos = sorted({int(e) for e in eos_ids})
    eos_table = np.full((_round_up(len(eos), 4),), _NEVER, np.int32)
    eos_table[: len(eos)] = eos
    seqs = [[int(t) for t in s] for s in stop_ids if len(s)]
    width = _round_up(max((len(s) for s in seqs), default=1), 8)
    stop_table = np.full((_round_up(len(seqs), 4), width), _NEVER, np.int32)
    for row, seq in enumerate(seqs):
        stop_table[row, :] = _ANY
        stop_table[row, width - len(seq) :] = seq
    return jnp.asarray(eos_table), jnp.asarray(stop_table)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_keys(keys, batch: int):
    """Per-row keys: typed ``[B]`` or raw ``[B, 2]`` (a list of keys is stacked)."""
    if isinstance(keys, (list, tuple)):
        keys = jnp.stack([jnp.asarray(k) for k in keys])
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    if keys.ndim == 0 or keys.shape[0] != batch:
        raise ValueError(
            f"keys must hold one PRNG key per row (leading dim {batch}), got shape {keys.shape}; "
            "use jax.random.split(key, B)"
        )
    return keys


def generate_padded(
    lm,
    ids,
    mask,
    keys,
    *,
    max_new_tokens,
    sampling: SamplingConfig,
    eos_ids: Sequence[int] = (),
    stop_ids: Sequence[Sequence[int]] = (),
    buffer_len: int | None = None,
    return_logits: bool = True,
    return_hidden: bool = False,
    pad_id: int | None = None,
) -> PaddedRollout:
    """Generate from already padded prompts; one compiled program per shape bucket.

    Args:
      lm: a ``CausalLM`` (a pytree argument of the compiled program, not a constant).
      ids: ``[B, P]`` int prompt ids; mask: ``[B, P]`` 1 for real tokens (left padding is the
        norm; any padding works, positions come from the mask). Every row needs >= 1 real token.
      keys: ``[B]`` PRNG keys (typed, or raw ``[B, 2]``); token ``i`` of row ``b`` is drawn with
        ``fold_in(keys[b], i)``. May be None when greedy.
      max_new_tokens: int or ``[B]`` per-row budget (a run-time value: no recompile per budget).
      sampling: temperature / top-k / top-p (run-time values; greedy when temperature is 0).
      eos_ids: ids that end a row (the EOS is kept and counted).
      stop_ids: token sequences that end a row when the generated suffix equals one.
        EOS ids and stop sequences are run-time tables (sizes rounded up): changing them does
        not recompile.
      buffer_len: ``N``, slots for generated tokens (static); default
        ``bucket_length(max(max_new_tokens))``. Must be ``>= max(max_new_tokens)``.
      return_logits / return_hidden: keep the ``[B, N, V]`` logits / ``[B, N, D]`` hidden states.
      pad_id: filler of ``tokens`` past a row's length; default the model's pad id (or 0).

    Returns:
      A :class:`PaddedRollout`.
    """
    ids = jnp.asarray(ids)
    mask = jnp.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"ids and mask must both be [B, P], got shapes {ids.shape} and {mask.shape}"
        )
    b, p_len = ids.shape
    cfg = lm.config
    budget = jnp.broadcast_to(jnp.asarray(max_new_tokens, jnp.int32), (b,))
    if _is_concrete(budget):
        top = int(np.max(np.asarray(budget))) if b else 0
        if top <= 0:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if buffer_len is None:
            buffer_len = bucket_length(top)
        if buffer_len < top:
            raise ValueError(f"buffer_len {buffer_len} is smaller than max_new_tokens {top}")
    elif buffer_len is None:
        raise ValueError("a traced max_new_tokens needs an explicit static buffer_len")
    if _is_concrete(mask) and b and int(np.min(np.asarray(mask).sum(-1))) == 0:
        raise ValueError("every prompt needs at least one real token (a row of mask is all 0)")
    # Slots are storage (padding may exceed the positions); each row's positions must fit.
    if _is_concrete(mask) and _is_concrete(budget) and b:
        need = np.asarray(mask).sum(-1) + np.asarray(budget)
        if int(need.max()) > cfg.max_position_embeddings:
            row = int(np.argmax(need))
            raise ValueError(
                f"row {row}: {int(np.asarray(mask)[row].sum())} prompt tokens + "
                f"{int(np.asarray(budget)[row])} new tokens exceed the model's "
                f"{cfg.max_position_embeddings} positions; shorten the prompt or max_new_tokens"
            )
    if _is_concrete(ids) and ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(
                f"prompt ids lie in [{lo}, {hi}], outside the model's vocabulary of "
                f"{cfg.vocab_size}; check the tokenizer matches this model"
            )
    greedy = sampling.greedy
    if keys is None:
        if not greedy:
            raise ValueError("sampling with temperature > 0 needs keys (one per row)")
        keys = jax.random.split(jax.random.key(0), b)
    keys = _as_keys(keys, b)
    if pad_id is None:
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    eos_table, stop_table = _tables(eos_ids, stop_ids)
    # With a sharded model (a mesh), the prompts' rows split over the mesh's "data" axis.
    from nabla_jax.sharding import shard_rows_like

    ids, mask, keys, budget = shard_rows_like(
        lm, (ids.astype(jnp.int32), mask.astype(jnp.int32), keys, budget)
    )
    return _generate(
        lm,
        ids,
        mask,
        keys,
        budget,
        jnp.float32(sampling.temperature),
        jnp.int32(sampling.top_k),
        jnp.float32(sampling.top_p),
        eos_table,
        stop_table,
        num_new=int(buffer_len),
        greedy=greedy,
        use_top_k=sampling.top_k > 0,
        use_top_p=sampling.top_p < 1,
        return_logits=bool(return_logits),
        return_hidden=bool(return_hidden),
        pad_id=int(pad_id),
    )


# --------------------------------------------------------------------------------------------
# Host API
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RolloutResult:
    """What :func:`rollout` returns (arrays are on device; ``N`` = bucketed ``max_new_tokens``).

    Attributes:
      tokens: ``[B, N]`` int32 generated ids (pad past ``lengths``).
      lengths: ``[B]`` int32 generated tokens, EOS included.
      logits: ``[B, N, V]`` float32 raw logits each token was sampled from, or None.
      hidden: ``[B, N, D]`` last-layer hidden states behind those logits, or None.
      stop_reason: per row ``"eos"`` | ``"stop_string"`` | ``"length"``.
      texts: per row decoded text trimmed at EOS / the first stop string, or None without a
        tokenizer.
      model_calls: ``[B]`` int32 model calls per row (= ``lengths``; ALGORITHM.md §3).
      prompt_lengths: ``[B]`` prompt lengths; ``prompt_pad``: the bucketed ``P``.
    """

    tokens: jax.Array
    lengths: jax.Array
    logits: jax.Array | None
    hidden: jax.Array | None
    stop_reason: list[str]
    texts: list[str] | None
    model_calls: jax.Array
    prompt_lengths: np.ndarray
    prompt_pad: int

    def row_tokens(self, b: int) -> list[int]:
        """The generated ids of row ``b`` (EOS included)."""
        return np.asarray(self.tokens[b, : int(self.lengths[b])]).tolist()


def _bucket_pair(longest: int, budget: int, limit: int, buckets) -> tuple[int, int]:
    """Bucketed (P, N) with ``P + N <= limit``, shrinking buckets near the limit."""
    p, n = bucket_length(longest, buckets), bucket_length(budget, buckets)
    if p + n > limit:
        n = max(budget, limit - p)
        if p + n > limit:
            p = max(longest, limit - n)
    return p, n


def _default_eos(lm, tokenizer) -> tuple[int, ...]:
    ids = set(lm.config.eos_token_ids)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def rollout(
    lm,
    prompts: Sequence[Sequence[int]],
    keys,
    *,
    max_new_tokens: int | Sequence[int],
    sampling: SamplingConfig,
    eos_ids: Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
    return_logits: bool = True,
    return_hidden: bool = False,
    buckets: int | Sequence[int] | None = None,
    skip_special_tokens: bool = False,
) -> RolloutResult:
    """Sample a continuation of each prompt, all rows in lockstep.

    Args:
      lm: a ``CausalLM``.
      prompts: ``B`` token-id lists (e.g. chat prompt ++ committed tokens), any lengths >= 1.
      keys: ``[B]`` PRNG keys, one per row (``jax.random.split``); None only when greedy.
      max_new_tokens: budget per row (int, or one int per row), >= 1.
      sampling: :class:`SamplingConfig`; temperature 0 = greedy.
      eos_ids: ids that end a row; default ``lm.config.eos_token_ids`` plus the tokenizer's EOS.
      stop_strings: strings that end a row (detected on device when their tokenization is
        generated; the text is always trimmed at the first occurrence on the host).
      tokenizer: decodes ``texts``; default ``lm.tokenizer``. Required for ``stop_strings``.
      return_logits / return_hidden: keep per-position logits ``[B, N, V]`` / hidden ``[B, N, D]``.
      buckets: length buckets for ``P`` and ``N`` (see :func:`bucket_length`).
      skip_special_tokens: passed to ``tokenizer.decode``.

    Returns:
      A :class:`RolloutResult`.
    """
    cfg = lm.config
    tokenizer = tokenizer if tokenizer is not None else lm.tokenizer
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = prompts.tolist()
    prompts = [list(np.asarray(p, np.int64).reshape(-1).tolist()) for p in prompts]
    if not prompts:
        raise ValueError("rollout needs at least one prompt")
    b = len(prompts)
    for row, p in enumerate(prompts):
        if not p:
            raise ValueError(
                f"prompt {row} is empty: a rollout needs at least one prompt token "
                "(e.g. a BOS or the chat template)"
            )
    if isinstance(max_new_tokens, numbers.Integral) and not isinstance(max_new_tokens, bool):
        budgets = [int(max_new_tokens)] * b
    else:
        budgets = [int(x) for x in max_new_tokens]
        if len(budgets) != b:
            raise ValueError(f"max_new_tokens has {len(budgets)} entries for {b} prompts")
    if min(budgets) <= 0:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    limit = cfg.max_position_embeddings
    for row, (p, n) in enumerate(zip(prompts, budgets, strict=True)):
        if len(p) + n > limit:
            raise ValueError(
                f"prompt {row} has {len(p)} tokens; with max_new_tokens={n} that exceeds the "
                f"model's {limit} positions: shorten the prompt or max_new_tokens"
            )
    stop_strings = tuple(stop_strings)
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise ValueError(f"stop strings must be non-empty str, got {stop_strings!r}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer (pass tokenizer= or load one with the LM)")
    if eos_ids is None:
        eos_ids = _default_eos(lm, tokenizer)
    stop_ids = ()
    if stop_strings:
        stop_ids = tuple(tuple(tokenizer.encode(s, add_special_tokens=False)) for s in stop_strings)

    longest = max(len(p) for p in prompts)
    p_len, n_len = _bucket_pair(longest, max(budgets), limit, buckets)
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    ids, mask = pad_prompts(prompts, p_len, pad_id)
    out = generate_padded(
        lm,
        ids,
        mask,
        keys,
        max_new_tokens=np.asarray(budgets, np.int32),
        sampling=sampling,
        eos_ids=eos_ids,
        stop_ids=stop_ids,
        buffer_len=n_len,
        return_logits=return_logits,
        return_hidden=return_hidden,
        pad_id=pad_id,
    )
    tokens = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    codes = np.asarray(out.stop)
    reasons = [STOP_REASONS[int(c)] for c in codes]
    texts = None
    if tokenizer is not None:
        texts = []
        for row in range(b):
            toks = tokens[row, : lengths[row]].tolist()
            if codes[row] == STOP_EOS:
                toks = toks[:-1]
            text = tokenizer.decode(toks, skip_special_tokens=skip_special_tokens)
            cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                reasons[row] = "stop_string"
            texts.append(text)
    return RolloutResult(
        tokens=out.tokens,
        lengths=out.lengths,
        logits=out.logits,
        hidden=out.hidden,
        stop_reason=reasons,
        texts=texts,
        model_calls=out.model_calls,
        prompt_lengths=np.asarray([len(p) for p in prompts]),
        prompt_pad=p_len,
    )
