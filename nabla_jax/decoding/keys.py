"""Where every random number of a decode comes from: the user's key, the prompt, a stream, a count.

A prompt's base key is ``fold_in(key, prompt_id)`` with ``prompt_id`` the crc32 of its chat
messages — never its position in a batch — so a prompt decodes the same alone or in company.
Each use then folds in a stream id and the prompt's own counter:

* ``ROLLOUT`` and the generation number (0 for the first rollout; Best-of-N sample ``i`` uses
  ``i``, so sample 0 is the ∇-Reasoner decoder's first rollout under the same key);
* ``RESAMPLE`` and the iteration number; ``DTO`` and the refinement number (Gumbel noise);
  ``PROBE`` and the probe number; ``SEARCH`` and a tree search's row counter (beam search,
  MCTS: :mod:`nabla_jax.decoding.search_rows`).

Two identical prompts in one call therefore decode identically; fold a sample index into ``key``
(one call per sample) for distinct samples.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "DTO",
    "PROBE",
    "RESAMPLE",
    "ROLLOUT",
    "SEARCH",
    "check_key",
    "prompt_base_keys",
    "prompt_id",
    "rollout_keys",
    "stream_keys",
]

ROLLOUT, RESAMPLE, DTO, PROBE, SEARCH = 0, 1, 2, 3, 4


def check_key(key, where: str) -> None:
    """A ``TypeError`` in one line for a key that is not a ``jax.random`` key (an int, a seed,
    None): ``where`` names the call."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (
        jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        or (jnp.dtype(dtype) == jnp.uint32 and getattr(key, "shape", None) == (2,))
    ):
        return
    raise TypeError(
        f"{where}: key must be a jax.random key, got {type(key).__name__} {key!r:.40}; pass "
        "jax.random.key(0) (not 0)"
    )


def prompt_id(messages: Any) -> int:
    """A stable 31-bit id of a prompt's content (crc32 of its chat messages as JSON)."""
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return zlib.crc32(blob) & 0x7FFFFFFF


def stream_keys(base_data, stream: int, counter):
    """Keys ``[B]`` ``fold_in(fold_in(base_b, stream), counter_b)`` from base key data ``[B, 2]``
    (uint32) and ``counter [B]`` (traceable)."""
    base = jax.random.wrap_key_data(base_data)

    def one(k, n):
        return jax.random.fold_in(jax.random.fold_in(k, stream), n)

    return jax.vmap(one)(base, jnp.asarray(counter, jnp.uint32))


def prompt_base_keys(key, prompt_ids):
    """Base keys ``[B]`` ``fold_in(key, prompt_id_b)`` of prompts with ids ``prompt_ids [B]``
    (uint32; traceable)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, prompt_ids)


@jax.jit
def rollout_keys(key, prompt_ids, samples):
    """Rollout keys ``[N]`` of (prompt, sample) rows: ``fold_in(fold_in(fold_in(key,
    prompt_ids[i]), ROLLOUT), samples[i])`` — sample ``s`` of a prompt is drawn with the key of
    the decoder's generation ``s`` of that prompt (``prompt_ids``, ``samples``: ``[N]`` uint32)."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    base = prompt_base_keys(key if typed else jax.random.wrap_key_data(key), prompt_ids)
    keys = stream_keys(jax.random.key_data(base), ROLLOUT, samples)
    return keys if typed else jax.random.key_data(keys)  # the kind of key given
