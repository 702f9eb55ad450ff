"""Reward-model scores of whole responses: one function for acceptance tests and Best-of-N.

A response is scored as ``RM template prefix ++ response ++ RM template suffix`` with a trailing
EOS dropped, so every candidate of a prompt is framed identically. On device the three parts stay
in fixed-shape buffers (``[B, Q]``, ``[B, L]``, ``[B, S]``) and the gaps between them are masked:
positions follow the mask and the score is read at the last real token, which equals scoring the
concatenated ids (:func:`score_responses`). :func:`rm_scores` scores id lists from the host.
A user-supplied scorer (a Python function of id lists) can stand in for the reward model inside
compiled programs through :func:`callback_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.decoding.stopping import hits_eos
from nabla_jax.functional.step_reward import response_reward
from nabla_jax.models.model import default_positions
from nabla_jax.runtime.buckets import bucket_length, pad_ids

__all__ = [
    "RMFrame",
    "Scorer",
    "callback_scores",
    "response_inputs",
    "rm_input_length",
    "rm_scores",
    "score_inputs",
    "score_responses",
]

Scorer = Callable[[list[list[int]]], Sequence[float]]


class RMFrame(NamedTuple):
    """The reward model's chat template around a response, per row.

    Attributes:
      prefix_ids, prefix_mask: ``[B, Q]`` the template prefix (the prompt included),
        left-padded.
      suffix_ids, suffix_mask: ``[B, S]`` the template suffix, right-padded.
    """

    prefix_ids: jax.Array
    prefix_mask: jax.Array
    suffix_ids: jax.Array
    suffix_mask: jax.Array


def response_inputs(frame: RMFrame, tokens, length, tables, rm_ids=None):
    """RM input ids and mask ``[B, Q + L + S]`` of responses ``tokens [B, L]`` of ``length [B]``
    framed by ``frame``; ``rm_ids [V_lm]`` maps LM ids to RM ids (None: the same ids).

    A last token that is an EOS id (``tables``) is masked out, like the acceptance test's text.
    """
    slots = jnp.arange(tokens.shape[1])[None, :]
    last = jnp.take_along_axis(tokens, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
    body = length - ((length > 0) & hits_eos(last, tables)).astype(jnp.int32)
    resp_mask = (slots < body[:, None]).astype(jnp.int32)
    body_ids = tokens if rm_ids is None else rm_ids[tokens]
    ids = jnp.concatenate(
        [frame.prefix_ids, jnp.where(resp_mask > 0, body_ids, 0), frame.suffix_ids], axis=1
    )
    mask = jnp.concatenate([frame.prefix_mask, resp_mask, frame.suffix_mask], axis=1)
    mask = mask.astype(jnp.int32)
    return ids, mask


def rm_input_length(frame: RMFrame, tokens, length, tables):
    """RM input tokens ``[B]`` of responses framed as :func:`response_inputs` frames them."""
    last = jnp.take_along_axis(tokens, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
    body = length - ((length > 0) & hits_eos(last, tables)).astype(jnp.int32)
    return jnp.sum(frame.prefix_mask, axis=-1) + body + jnp.sum(frame.suffix_mask, axis=-1)


def score_inputs(rm, ids, mask, cache_slots: int | None = None, start=0):
    """Reward-model score ``[B]`` float32 of RM inputs ``ids``/``mask [B, T]`` (any 0/1 mask:
    positions follow it, the score is read at the last real token; the mean over labels when
    there are several) — the one scoring computation of the package. A
    :class:`~nabla_jax.functional.step_reward.StepReward` aggregates its scores at the step ends
    of the response, which begins at slot ``start`` (scalar or ``[B]``).

    With ``cache_slots`` returns ``(score, cache)``: also the inputs' keys/values in a
    ``KVCache`` of that many slots (input slot ``i`` in cache slot ``i``).
    """
    b, t = ids.shape
    mask = mask.astype(jnp.int32)
    cache = None if cache_slots is None else rm.init_cache(b, cache_slots)
    key_mask = None if cache is None else jnp.pad(mask, ((0, 0), (0, cache_slots - t)))
    out = rm.forward(
        ids, mask, position_ids=default_positions(mask), cache=cache, write_index=0,
        key_mask=key_mask,
    )  # fmt: skip
    score = response_reward(rm, out.hidden, ids, mask, start)
    return score if cache_slots is None else (score, out.cache)


def callback_scores(scorer: Scorer, ids, mask, wanted):
    """``scorer`` on the host, from inside a compiled program: float32 ``[B]`` (0 where not
    ``wanted``). Each wanted row is passed as the list of its masked-in ids."""

    def host(ids, mask, wanted):
        rows = [
            np.asarray(i)[np.asarray(m) > 0].tolist()
            for i, m, w in zip(ids, mask, wanted, strict=True)
            if w
        ]
        out = np.zeros(len(wanted), np.float32)
        if rows:
            got = np.asarray(scorer(rows), np.float64).reshape(-1)
            if got.shape != (len(rows),):
                raise ValueError(f"scorer returned {got.shape[0]} scores for {len(rows)} inputs")
            out[np.asarray(wanted, bool)] = got
        return out

    shape = jax.ShapeDtypeStruct((ids.shape[0],), jnp.float32)
    return jax.pure_callback(host, shape, ids, mask, wanted, vmap_method="sequential")


def score_responses(
    rm, frame: RMFrame, tokens, length, tables, *, scorer: Scorer | None = None, wanted=None,
    cache_slots: int | None = None, rm_ids=None,
):  # fmt: skip
    """Scores ``[B]`` of responses ``tokens [B, L]`` of ``length [B]`` framed by the RM template
    ``frame`` (traceable).

    Returns ``(scores, rm_tokens, cache)``: the reward model's (or ``scorer``'s) score, the
    number of RM input tokens of each row, and — with ``cache_slots`` — the reward model's
    keys/values of the input (a ``KVCache`` of that many slots; the template prefix in slots
    ``[0, Q)``, response token ``j`` in slot ``Q + j``), else None. ``rm_ids [V_lm]`` maps
    the response's LM ids to RM ids (None: the RM reads them as they are).
    """
    ids, mask = response_inputs(frame, tokens, length, tables, rm_ids)
    n_tokens = jnp.sum(mask, axis=-1)
    start = frame.prefix_ids.shape[1]  # the response's first slot
    if cache_slots is not None:
        score, cache = score_inputs(rm, ids, mask, cache_slots, start)
    elif scorer is not None:
        score, cache = None, None
    else:
        score, cache = score_inputs(rm, ids, mask, start=start), None
    if scorer is not None:
        wanted = jnp.ones(ids.shape[0], bool) if wanted is None else wanted
        score = callback_scores(scorer, ids, mask, wanted)
    return score, n_tokens, cache


_score_inputs_jit = jax.jit(score_inputs, static_argnames=("cache_slots",))


def rm_scores(rm, seqs: Sequence[Sequence[int]], *, batch_size: int = 16,
              starts: Sequence[int] | None = None) -> np.ndarray:  # fmt: skip
    """Reward-model scores ``[len(seqs)]`` (float64) of full RM input id lists.

    ``batch_size`` rows per call; the width is bucketed once over all sequences, so one program
    serves every chunk. ``starts``: where each sequence's response begins (its template prefix
    length) — a ``StepReward`` reads steps from there on (default 0).
    """
    if not len(seqs):
        return np.zeros((0,), np.float64)
    starts = [0] * len(seqs) if starts is None else [int(s) for s in starts]
    if len(starts) != len(seqs):
        raise ValueError(f"starts has {len(starts)} entries for {len(seqs)} sequences")
    pad = rm.config.pad_token_id if rm.config.pad_token_id is not None else 0
    width = bucket_length(max(max(len(s) for s in seqs), 1))
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk = [list(s) for s in seqs[start : start + batch_size]]
        first = starts[start : start + batch_size]
        rows = chunk + [chunk[0]] * (batch_size - len(chunk))
        first = first + [first[0]] * (batch_size - len(chunk))
        ids, mask = pad_ids(rows, width, left=True, pad_id=pad)
        slot = np.asarray([width - len(r) + f for r, f in zip(rows, first, strict=True)], np.int32)
        scores = np.asarray(_score_inputs_jit(rm, ids, mask, start=slot))
        out.append(scores[: len(chunk)].astype(np.float64))
    return np.concatenate(out)
