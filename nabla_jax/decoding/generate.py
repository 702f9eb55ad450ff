"""Host API of rollouts: sample continuations of token-id prompts in bucketed fixed shapes.

:func:`generate_padded` takes already padded prompts; :func:`rollout` takes id lists, pads them
to a bucket (:func:`nabla_jax.runtime.buckets.bucket_length`) and decodes the texts. Both run one
compiled program per shape bucket — the fixed-shape core of :mod:`nabla_jax.decoding.continuation` —
with budgets, sampling values, EOS ids and stop sequences as run-time inputs. With the persistent
XLA cache on and the model on one device, that program is also kept serialized beside the cache
(:mod:`nabla_jax.runtime.exported`, as the ∇ loop is): a later process neither traces nor lowers
it.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.decoding.buffers import empty_responses, prefill_prompts
from nabla_jax.decoding.continuation import (
    TRACE_COUNTS,
    PromptCache,
    Sampler,
    Span,
    continue_responses,
)
from nabla_jax.decoding.sampling import SamplingConfig, SamplingParams, SamplingProgram
from nabla_jax.decoding.stopping import (
    STOP_EOS,
    STOP_REASONS,
    default_eos_ids,
    stop_tables,
    trim_text,
)
from nabla_jax.runtime import exported
from nabla_jax.runtime.buckets import bucket_length, pad_ids

__all__ = ["PaddedRollout", "RolloutResult", "generate_padded", "pad_prompts", "rollout"]


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
    """Left-pad token-id lists into ``ids [B, length]`` int32 and ``mask [B, length]`` int32."""
    return pad_ids(prompts, length, left=True, pad_id=pad_id)


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


def _generate_body(lm, ids, mask, keys, budget, params, tables, *, num_new, prog, keep, pad_id):
    TRACE_COUNTS["generate"] += 1
    b = ids.shape[0]
    c = lm.config
    resp = empty_responses(
        b,
        num_new,
        pad_id=pad_id,
        vocab=c.vocab_size if "logits" in keep else None,
        hidden=c.hidden_size if "hidden" in keep else None,
        dtype=jnp.dtype(lm.dtype),
    )
    p = ids.shape[1]
    kv, logits, hidden = prefill_prompts(lm, ids, mask, p + num_new + 1)
    start = jnp.zeros((b,), jnp.int32)
    out, _, calls = continue_responses(
        lm,
        prompt=PromptCache(kv, p, jnp.sum(mask, axis=-1), logits, hidden),
        span=Span(resp, start, budget, budget > 0, keys),
        sampler=Sampler(params, prog, tables, pad_id),
    )
    return PaddedRollout(out.tokens, out.length, out.logits, out.hidden, out.stop, calls)


_generate = jax.jit(_generate_body, static_argnames=("num_new", "prog", "keep", "pad_id"))


def _on_one_device(tree) -> bool:
    return all(
        len(getattr(x, "sharding", None).device_set) == 1
        for x in jax.tree.leaves(tree)
        if getattr(x, "sharding", None) is not None
    )


def _generate_exported(store, lm, args, *, num_new, prog, keep, pad_id) -> PaddedRollout:
    """:func:`_generate` through ``store``'s serialized program for these shapes and statics."""
    fn = functools.partial(_generate_body, num_new=num_new, prog=prog, keep=keep, pad_id=pad_id)
    kept = {name: (0 if name in keep else None) for name in ("logits", "hidden")}
    out_tree = jax.tree.structure(PaddedRollout(0, 0, kept["logits"], kept["hidden"], 0, 0))
    static = f"num_new={num_new};prog={prog!r};keep={keep};pad_id={pad_id}"
    return store.call("generate", fn, (lm, *args), static=static, out_tree=out_tree)


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
      ids: ``[B, P]`` int prompt ids; mask: ``[B, P]`` 1 for real tokens (any padding; positions
        come from the mask). Every row needs >= 1 real token.
      keys: ``[B]`` PRNG keys (typed, or raw ``[B, 2]``); token ``i`` of row ``b`` is drawn with
        ``fold_in(keys[b], i)``. May be None when greedy.
      max_new_tokens: int or ``[B]`` per-row budget (run-time: no recompile per budget).
      sampling: temperature / top-k / top-p (run-time values; greedy when temperature is 0).
      eos_ids: ids that end a row (the EOS is kept and counted).
      stop_ids: token sequences that end a row when the generated suffix equals one.
      buffer_len: ``N``, slots for generated tokens (static); default
        ``bucket_length(max(max_new_tokens))``. Must be ``>= max(max_new_tokens)``.
      return_logits / return_hidden: keep the ``[B, N, V]`` logits / ``[B, N, D]`` hidden states.
      pad_id: filler of ``tokens`` past a row's length; default the model's pad id (or 0).

    Returns:
      A :class:`PaddedRollout`.
    """
    ids = np.asarray(ids)
    mask = np.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"ids and mask must both be [B, P], got shapes {ids.shape} and {mask.shape}"
        )
    b = ids.shape[0]
    cfg = lm.config
    budget = np.broadcast_to(np.asarray(max_new_tokens, np.int32), (b,))
    top = int(budget.max()) if b else 0
    if top <= 0 or int(budget.min()) < 0:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    buffer_len = bucket_length(top) if buffer_len is None else int(buffer_len)
    if buffer_len < top:
        raise ValueError(f"buffer_len {buffer_len} is smaller than max_new_tokens {top}")
    if b and int(mask.sum(-1).min()) == 0:
        raise ValueError("every prompt needs at least one real token (a row of mask is all 0)")
    need = mask.sum(-1) + budget
    if b and int(need.max()) > cfg.max_position_embeddings:
        row = int(np.argmax(need))
        raise ValueError(
            f"row {row}: {int(mask[row].sum())} prompt tokens + {int(budget[row])} new tokens "
            f"exceed the model's {cfg.max_position_embeddings} positions; shorten the prompt or "
            "max_new_tokens"
        )
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(
                f"prompt ids lie in [{lo}, {hi}], outside the model's vocabulary of "
                f"{cfg.vocab_size}; check the tokenizer matches this model"
            )
    if keys is None:
        if not sampling.greedy:
            raise ValueError("sampling with temperature > 0 needs keys (one per row)")
        keys = jax.random.split(jax.random.key(0), b)
    keys = _as_keys(keys, b)
    if pad_id is None:
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    tables = stop_tables(eos_ids, stop_ids)
    # With a sharded model (a mesh), the prompts' rows split over the mesh's "data" axis.
    from nabla_jax.runtime.sharding import shard_rows_like

    args = shard_rows_like(lm, (ids.astype(np.int32), mask.astype(np.int32), keys, budget))
    keep = ("logits",) * bool(return_logits) + ("hidden",) * bool(return_hidden)
    statics = dict(num_new=buffer_len, prog=SamplingProgram.of(sampling), keep=keep,
                   pad_id=int(pad_id))  # fmt: skip
    values = (*args, SamplingParams.of(sampling), tables)
    store = exported.default_store()
    if store is not None and _on_one_device((lm, values)):
        return _generate_exported(store, lm, values, **statics)
    return _generate(lm, *values, **statics)


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
      model_calls: ``[B]`` int32 model calls per row (= ``lengths``).
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
    mesh=None,
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
      buckets: length buckets for ``P`` and ``N``
        (see :func:`nabla_jax.runtime.buckets.bucket_length`).
      skip_special_tokens: passed to ``tokenizer.decode``.
      mesh: a ``jax.sharding.Mesh`` ("data", "model"), as everywhere in nabla-jax: the LM's
        weights are split over "model" and the rows over "data" (when their number divides it;
        otherwise they are replicated). Without it a model loaded or sharded onto a mesh runs
        where it lies.

    Returns:
      A :class:`RolloutResult`.
    """
    if mesh is not None:
        from nabla_jax.models.partition import shard_model

        lm = shard_model(lm, mesh)
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
        eos_ids = default_eos_ids(lm, tokenizer)
    stop_ids = ()
    if stop_strings:
        stop_ids = tuple(tuple(tokenizer.encode(s, add_special_tokens=False)) for s in stop_strings)
    p_len = bucket_length(max(len(p) for p in prompts), buckets)
    n_len = bucket_length(max(budgets), buckets)
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
    tokens, lengths, codes = jax.device_get((out.tokens, out.lengths, out.stop))
    reasons = [STOP_REASONS[int(c)] for c in codes]
    texts = None
    if tokenizer is not None:
        texts = []
        for row in range(b):
            toks = tokens[row, : lengths[row]].tolist()
            if codes[row] == STOP_EOS:
                toks = toks[:-1]
            text = tokenizer.decode(toks, skip_special_tokens=skip_special_tokens)
            text, cut = trim_text(text, stop_strings)
            if cut:
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
