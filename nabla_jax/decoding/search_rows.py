"""What the tree searches (step-level beam search, MCTS) share: steps, prompt groups, row copies.

* A **step** ends at a token whose text contains the step delimiter (``"\\n"`` on the bundled
  arithmetic task, ``"\\n\\n"`` on MATH — passed in, decoding knows no task). The delimiter's
  tokens join the EOS table of the rollouts (:func:`step_tables`), so
  :func:`~nabla_jax.decoding.continuation.continue_responses` stops a row at a step end; the
  real EOS ids tell a finished response from a finished step (:func:`ended`).
* **Prompt groups** (:func:`prompt_groups`): ``G`` prompts per compiled call, each rendered with
  the LM chat template (``[G, P]``, left-padded) and framed by the RM template
  (:class:`~nabla_jax.decoding.scoring.RMFrame`), widths bucketed once per call; short groups
  are padded with idle prompts, so one program serves every group of a bucket.
* **Rows** of a search are (prompt, node) pairs; a child starts from its parent's key/value
  cache rows, copied with :func:`take_rows` (the prefix is never recomputed).
* **Keys**: row randomness is ``fold_in(fold_in(fold_in(key, prompt_id), SEARCH), counter)``
  (:func:`nabla_jax.decoding.keys.stream_keys`), so a prompt searches the same alone or in
  company.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.decoding.keys import prompt_base_keys, prompt_id
from nabla_jax.decoding.scoring import RMFrame
from nabla_jax.decoding.stopping import STOP_EOS, STOP_STRING, StopTables, hits_eos
from nabla_jax.decoding.stopping import stop_tables as make_tables
from nabla_jax.functional.step_reward import rm_frame
from nabla_jax.runtime.buckets import bucket_length, pad_ids
from nabla_jax.runtime.rows import take_at
from nabla_jax.text.templates import build_messages, lm_prompt_ids, rm_prefix_suffix_ids

__all__ = [
    "SearchGroup",
    "check_delimiter",
    "ended",
    "prompt_groups",
    "step_tables",
    "step_token_ids",
    "take_rows",
    "typed_key",
]

_STEP_IDS: dict = {}


def check_delimiter(delimiter) -> str:
    """The step delimiter, a non-empty string (one-line error otherwise)."""
    if not isinstance(delimiter, str) or not delimiter:
        raise ValueError(
            f"step_delimiter must be a non-empty string (e.g. '\\n' for one line per step), "
            f"got {delimiter!r}"
        )
    return delimiter


def step_token_ids(tokenizer, vocab_size: int, delimiter: str) -> tuple[int, ...]:
    """Ids of the LM vocabulary (``[0, vocab_size)``) whose decoded text contains
    ``delimiter``: a step ends at such a token (computed once per tokenizer and delimiter)."""
    cache_key = (id(tokenizer), vocab_size, delimiter)
    if cache_key not in _STEP_IDS:
        ids = tuple(i for i in range(vocab_size) if delimiter in tokenizer.decode([i]))
        if not ids:
            raise ValueError(
                f"no token of the LM's vocabulary contains the step delimiter {delimiter!r}: "
                "no step could ever end; pass the task's delimiter (step_delimiter=)"
            )
        _STEP_IDS[cache_key] = (tokenizer, ids)  # the tokenizer is kept so its id stays unique
    return _STEP_IDS[cache_key][1]


def step_tables(eos_ids: Sequence[int], step_ids: Sequence[int], stop_ids) -> StopTables:
    """Rollout tables that end a row at an EOS, a step-ending token or a stop sequence."""
    return make_tables(tuple(eos_ids) + tuple(step_ids), stop_ids)


def ended(tokens, length, stop, tables: StopTables, limit: int):
    """bool ``[B]``: the response is over (its last token is a real EOS in ``tables``, a stop
    sequence ended it, or it has ``limit`` tokens) — not merely at a step end."""
    last = take_at(tokens, jnp.maximum(length - 1, 0))
    eos = (stop == STOP_EOS) & (length > 0) & hits_eos(last, tables)
    return eos | (stop == STOP_STRING) | (length >= limit)


def take_rows(tree, index):
    """Rows ``index [R]`` of every leaf of ``tree`` (a ``KVCache`` leaf ``[layers, B, ...]``
    along axis 1, others along axis 0): row ``r`` of the result is row ``index[r]``."""
    from nabla_jax.models.layers import KVCache

    def walk(x):
        if isinstance(x, KVCache):
            return KVCache(jnp.take(x.k, index, axis=1), jnp.take(x.v, index, axis=1))
        return jax.tree.map(lambda a: jnp.take(a, index, axis=0), x)

    return jax.tree.map(walk, tree, is_leaf=lambda x: isinstance(x, KVCache))


class SearchGroup(NamedTuple):
    """Device inputs of ``G`` prompts.

    Attributes:
      lm_ids, lm_mask: ``[G, P]`` LM chat prompts, left-padded.
      frame: the RM template around a response (:class:`RMFrame`, ``[G, Q]`` / ``[G, S]``).
      pid: ``[G]`` uint32 prompt ids (crc32 of the chat messages).
      valid: ``[G]`` bool real prompts (idle padding rows are False).
    """

    lm_ids: jax.Array
    lm_mask: jax.Array
    frame: RMFrame
    pid: jax.Array
    valid: jax.Array

    def base_keys(self, key):
        """``[G, 2]`` uint32 key data of ``fold_in(key, prompt_id)`` (traceable)."""
        return jax.random.key_data(prompt_base_keys(key, self.pid))


def typed_key(key):
    """``key`` as a typed PRNG key (raw ``uint32[2]`` key data is wrapped)."""
    if key is None:
        raise ValueError("the search samples its steps: pass a jax.random key")
    key = jax.numpy.asarray(key) if not isinstance(key, jax.Array) else key
    return (
        key
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        else (jax.random.wrap_key_data(key))
    )


def prompt_groups(lm, rm, rm_tok, prompts: list, *, group: int, max_length: int, system):
    """The prompts as :class:`SearchGroup` s of ``group`` prompts (input order), after checking
    that every prompt plus ``max_length`` fits the LM's and the RM's positions."""
    rows = []
    for i, p in enumerate(prompts):
        lm_ids = lm_prompt_ids(lm.tokenizer, p, system=system)
        pre, suf = rm_frame(rm, *rm_prefix_suffix_ids(rm_tok, p, system=system))
        for what, model, used in (
            ("LM", lm, len(lm_ids) + max_length),
            ("RM", rm, len(pre) + max_length + len(suf)),
        ):
            limit = model.config.max_position_embeddings
            if used > limit:
                raise ValueError(
                    f"prompt {i}: its {what} input ({used - max_length} template tokens) plus "
                    f"max_length {max_length} is {used} tokens, more than the {what}'s {limit} "
                    "positions; shorten the prompt or lower max_length"
                )
        rows.append((lm_ids, pre, suf, prompt_id(build_messages(p, system=system))))
    p_len = bucket_length(max(len(r[0]) for r in rows))
    q_len = bucket_length(max(max(len(r[1]) for r in rows), 1))
    s_len = bucket_length(max(max(len(r[2]) for r in rows), 1))
    pad = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0
    ids = np.asarray([r[3] for r in rows], np.uint32)
    out = []
    for start in range(0, len(rows), group):
        chunk = rows[start : start + group]
        m = len(chunk)
        chunk = chunk + [chunk[0]] * (group - m)
        lm_ids, lm_mask = pad_ids([r[0] for r in chunk], p_len, left=True, pad_id=pad)
        pre_ids, pre_mask = pad_ids([r[1] for r in chunk], q_len, left=True)
        suf_ids, suf_mask = pad_ids([r[2] for r in chunk], s_len, left=False)
        pid = ids[np.asarray([min(start + j, start + m - 1) for j in range(group)])]
        valid = np.arange(group) < m
        frame = RMFrame(pre_ids, pre_mask, suf_ids, suf_mask)
        out.append(SearchGroup(lm_ids, lm_mask, frame, pid, valid))
    return out
