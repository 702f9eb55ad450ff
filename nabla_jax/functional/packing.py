"""Refinement problems in fixed shapes: :func:`pack`, bucketing and chunking (host side).

Everything here runs on the host, once, before compute: it validates the problems (token ids in
range, window widths, positions) and pads them into a :class:`PaddedProblems` pytree whose shapes
come from buckets (``buckets.bucket_length``) or from sizes you fix (:class:`PackSizes`), never
from one problem's length — so the compiled refinement sees few shapes.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from nabla_jax.functional.pluggable import lm_sizes
from nabla_jax.runtime.buckets import bucket_length, pad_ids

__all__ = ["PackSizes", "PaddedProblems", "pack", "pad_problems", "plan_chunks", "shape_key"]


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


@dataclasses.dataclass(frozen=True)
class PackSizes:
    """Fixed padded sizes of a pack: LM prefix ``P``, RM prefix ``Q``, RM suffix ``S``, window
    ``K`` (tokens). Fix them to make every pack of a run share one compiled program."""

    lm_prefix: int
    rm_prefix: int
    rm_suffix: int
    window: int

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"PackSizes.{f.name}={v!r}: must be an int ≥ 0")
        if self.lm_prefix < 1 or self.window < 1:
            raise ValueError("PackSizes.lm_prefix and PackSizes.window must be ≥ 1")


def shape_key(problem) -> tuple[int, int, int, int]:
    """The bucketed ``(P, Q, S, K)`` of one problem."""
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


def pad_problems(lm, problems, cfg, batch_size: int, sizes: PackSizes | None = None):
    """Pad problems to ``batch_size`` rows (filler rows masked by ``row_valid``).

    Shapes: ``sizes`` when given (a problem that does not fit raises; nothing is truncated),
    else the largest bucketed shape among the problems. Validated before anything is computed.
    """
    if sizes is None:
        p, q, s, k = (max(x) for x in zip(*[shape_key(pr) for pr in problems]))
    else:
        p, q, s, k = sizes.lm_prefix, sizes.rm_prefix, sizes.rm_suffix, sizes.window
    vocab, hidden, max_positions = lm_sizes(lm)
    width = vocab if cfg.mode == "logits" else hidden
    for i, pr in enumerate(problems):
        init = np.asarray(pr.init)
        if init.shape[1] != width:
            raise ValueError(
                f"problem {i}: init has width {init.shape[1]}, but {cfg.mode} mode needs "
                f"{'V' if cfg.mode == 'logits' else 'D'} = {width}"
            )
        if pr.ref_logits is not None and np.asarray(pr.ref_logits).shape != (
            init.shape[0],
            vocab,
        ):
            raise ValueError(f"problem {i}: ref_logits must be [K, {vocab}]")
        ids = np.asarray(pr.lm_prefix_ids)
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"problem {i}: lm_prefix_ids hold ids outside [0, {vocab})")
        if max_positions is not None and len(ids) + init.shape[0] > max_positions:
            raise ValueError(
                f"problem {i}: prefix ({len(ids)}) + window ({init.shape[0]}) exceeds the LM's "
                f"{max_positions} positions"
            )
        lengths = (len(ids), len(pr.rm_prefix_ids), len(pr.rm_suffix_ids), init.shape[0])
        for name, n, cap in zip(("lm_prefix", "rm_prefix", "rm_suffix", "window"), lengths,
                                (p, q, s, k)):  # fmt: skip
            if n > cap:
                raise ValueError(
                    f"problem {i}: {name} has {n} tokens, more than PackSizes.{name}={cap}; "
                    "raise the size (nothing is truncated)"
                )
    c_vocab = vocab
    fill = batch_size - len(problems)
    rows = list(problems) + [problems[0]] * fill
    lm_ids, lm_mask = pad_ids([r.lm_prefix_ids for r in rows], p, left=True)
    rm_ids, rm_mask = pad_ids([r.rm_prefix_ids for r in rows], q, left=True)
    sf_ids, sf_mask = pad_ids([r.rm_suffix_ids for r in rows], s, left=False)
    init = np.zeros((batch_size, k, width), np.float32)
    ref = np.zeros((batch_size, k, c_vocab), np.float32)
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


def pack(lm, problems, cfg=None, *, sizes: PackSizes | None = None) -> PaddedProblems:
    """Problems as one fixed-shape pytree with a leading prompt axis (host side, validated once).

    Args:
      lm: the policy (a nabla-jax ``CausalLM`` or an ``EmbeddingLM``): its vocabulary, width and
        positions validate the problems.
      problems: a list of ``RefineProblem``.
      cfg: the ``DTOConfig`` (its ``mode`` decides the window's width); default ``DTOConfig()``.
      sizes: fixed padded sizes; default the largest bucketed shape among the problems.

    Returns:
      :class:`PaddedProblems` with ``B = len(problems)`` rows, all valid. Index it with
      ``jax.tree.map(lambda a: a[i], packed)`` for one prompt, or ``jax.vmap`` over it.
    """
    from nabla_jax.functional.dto_config import DTOConfig

    if not problems:
        raise ValueError("pack needs at least one RefineProblem")
    cfg = DTOConfig() if cfg is None else cfg
    return pad_problems(lm, list(problems), cfg, len(problems), sizes)
