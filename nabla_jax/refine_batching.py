"""Padding and bucketing of refinement problems into fixed shapes (few compiled programs)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from nabla_jax.buckets import bucket_length, pad_ids


class PaddedProblems(NamedTuple):
    """A batch of problems in fixed shapes (a pytree of arrays).

    lm_prefix_ids / lm_prefix_mask: ``[B, P]`` left-padded. rm_prefix_ids / rm_prefix_mask:
    ``[B, Q]`` left-padded. rm_suffix_ids / rm_suffix_mask: ``[B, S]`` right-padded.
    init: ``[B, K, V|D]`` right-padded windows; window_mask ``[B, K]``; ref_logits ``[B, K, V]``;
    row_valid ``[B]`` (0 for filler rows).
    """

    lm_prefix_ids: Any
    lm_prefix_mask: Any
    rm_prefix_ids: Any
    rm_prefix_mask: Any
    rm_suffix_ids: Any
    rm_suffix_mask: Any
    init: Any
    window_mask: Any
    ref_logits: Any
    row_valid: Any


def shape_key(problem) -> tuple[int, int, int, int]:
    return (
        bucket_length(len(problem.lm_prefix_ids)),
        bucket_length(len(problem.rm_prefix_ids)) if len(problem.rm_prefix_ids) else 0,
        bucket_length(len(problem.rm_suffix_ids)) if len(problem.rm_suffix_ids) else 0,
        bucket_length(np.asarray(problem.init).shape[0]),
    )


def plan_chunks(problems, batch_size: int) -> list[list[int]]:
    """Indices of problems grouped by bucketed shape, in chunks of at most ``batch_size``."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        groups[shape_key(p)].append(i)
    chunks = []
    for _, idx in sorted(groups.items()):
        chunks += [idx[j : j + batch_size] for j in range(0, len(idx), batch_size)]
    return chunks


def pad_problems(lm, problems, cfg, batch_size: int) -> PaddedProblems:
    """Pad one chunk of same-bucket problems to ``batch_size`` rows of its bucketed shape."""
    p, q, s, k = (max(x) for x in zip(*[shape_key(pr) for pr in problems]))
    c = lm.config
    width = c.vocab_size if cfg.mode == "logits" else c.hidden_size
    for i, pr in enumerate(problems):
        init = np.asarray(pr.init)
        if init.shape[1] != width:
            raise ValueError(
                f"problem {i}: init has width {init.shape[1]}, but {cfg.mode} mode needs "
                f"{'V' if cfg.mode == 'logits' else 'D'} = {width}"
            )
        if pr.ref_logits is not None and np.asarray(pr.ref_logits).shape != (
            init.shape[0],
            c.vocab_size,
        ):
            raise ValueError(f"problem {i}: ref_logits must be [K, {c.vocab_size}]")
        ids = np.asarray(pr.lm_prefix_ids)
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"problem {i}: lm_prefix_ids hold ids outside [0, {c.vocab_size})")
        if len(ids) + init.shape[0] > c.max_position_embeddings:
            raise ValueError(
                f"problem {i}: prefix ({len(ids)}) + window ({init.shape[0]}) exceeds the LM's "
                f"{c.max_position_embeddings} positions"
            )
    fill = batch_size - len(problems)
    rows = list(problems) + [problems[0]] * fill
    lm_ids, lm_mask = pad_ids([r.lm_prefix_ids for r in rows], p, left=True)
    rm_ids, rm_mask = pad_ids([r.rm_prefix_ids for r in rows], q, left=True)
    sf_ids, sf_mask = pad_ids([r.rm_suffix_ids for r in rows], s, left=False)
    init = np.zeros((batch_size, k, width), np.float32)
    ref = np.zeros((batch_size, k, c.vocab_size), np.float32)
    win = np.zeros((batch_size, k), np.int32)
    for i, r in enumerate(rows):
        x = np.asarray(r.init, np.float32)
        n = x.shape[0]
        init[i, :n] = x
        win[i, :n] = 1
        if r.ref_logits is not None:
            ref[i, :n] = np.asarray(r.ref_logits, np.float32)
        elif cfg.mode == "logits":
            ref[i, :n] = x
    if cfg.mode == "latents" and any(r.ref_logits is None for r in rows):
        ref_default = np.asarray(lm.head_logits(jnp.asarray(init)))
        for i, r in enumerate(rows):
            if r.ref_logits is None:
                ref[i] = ref_default[i]
    valid = np.zeros(batch_size, np.float32)
    valid[: len(problems)] = 1.0
    return PaddedProblems(
        *(jnp.asarray(a) for a in (lm_ids, lm_mask, rm_ids, rm_mask, sf_ids, sf_mask)),
        jnp.asarray(init),
        jnp.asarray(win),
        jnp.asarray(ref),
        jnp.asarray(valid),
    )
