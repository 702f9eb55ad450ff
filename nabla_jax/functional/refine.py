"""Differentiable textual optimization (DTO), host API: ``refine``, ``refine_batch``, the probe.

``refine`` optimizes one ahead window; ``refine_batch`` many at once. Both validate and pad the
problems on the host (:mod:`nabla_jax.functional.packing`), run the functional core's compiled
program (:func:`nabla_jax.functional.refine_rows`: every optimizer step of every prompt is one
iteration of a ``lax.scan`` inside one ``jax.jit``, with the hyperparameters as run-time values),
and bring the results back to the host, raising on a non-finite loss when asked to. For a pure
function to put under your own ``jit`` / ``vmap``, use :func:`nabla_jax.functional.make_refine`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.functional.checks import (
    check_finite_input,
    check_models,
    check_rm_ids,
    rm_embedding_table,
)
from nabla_jax.functional.dto_config import DTOConfig
from nabla_jax.functional.packing import pad_problems, plan_chunks
from nabla_jax.functional.program import grad_norms_rows_jit, refine_rows_jit
from nabla_jax.functional.step import RefineTrace
from nabla_jax.models import partition
from nabla_jax.models.model import CausalLM
from nabla_jax.runtime import sharding

__all__ = [
    "RefineProblem",
    "RefineResult",
    "RefineTrace",
    "compiled_programs",
    "refine",
    "refine_batch",
    "window_grad_norms",
]


@dataclasses.dataclass(frozen=True)
class RefineProblem:
    """One window to refine.

    Attributes:
      lm_prefix_ids: ``[P]`` LM chat-templated prompt (with generation prompt) ++ committed tokens.
      rm_prefix_ids: ``[Q]`` RM template prefix ++ committed tokens (may be empty).
      rm_suffix_ids: ``[S]`` RM template suffix after the response (may be empty).
      init: ``[K, V]`` initial window logits ("logits" mode) or ``[K, D]`` hidden states
        ("latents" mode).
      ref_logits: ``[K, V]`` reference logits for the KL term (default: the initial logits).
    """

    lm_prefix_ids: Any
    rm_prefix_ids: Any
    rm_suffix_ids: Any
    init: Any
    ref_logits: Any = None

    def __post_init__(self):
        for name in ("lm_prefix_ids", "rm_prefix_ids", "rm_suffix_ids"):
            ids = np.asarray(getattr(self, name))
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise ValueError(f"RefineProblem.{name} must be a 1-D list of token ids")
        if np.asarray(self.lm_prefix_ids).size == 0:
            raise ValueError(
                "RefineProblem.lm_prefix_ids is empty: it must hold at least the prompt"
            )
        init = np.asarray(self.init)
        if init.ndim != 2 or init.shape[0] == 0:
            raise ValueError(
                f"RefineProblem.init must be [K, V] or [K, D] with K ≥ 1, got {init.shape}"
            )
        if self.ref_logits is not None and np.asarray(self.ref_logits).shape[0] != init.shape[0]:
            raise ValueError("RefineProblem.ref_logits must have one row per window position")
        check_finite_input(init, "RefineProblem.init")


class RefineResult(NamedTuple):
    """logits ``[K, V]`` (``[B, K, V]``), tokens ``[K]`` = argmax, latents (latents mode) or None,
    trace, model_calls (4 per full step for the paper objective), full_steps, and
    batch_full_steps (steps in which the compiled program actually ran the models)."""

    logits: Any
    tokens: Any
    latents: Any
    trace: RefineTrace
    model_calls: Any
    full_steps: Any
    batch_full_steps: Any = None


def _check_host_api(lm, rm, cfg: DTOConfig) -> None:
    """The host API takes nabla-jax models (functions of embeddings: nj.functional)."""
    check_models(lm, rm, cfg, stacklevel=4)
    if not isinstance(lm, CausalLM):
        raise TypeError(
            f"lm must be a nabla_jax CausalLM, got {type(lm).__name__}; for an EmbeddingLM use "
            "nj.functional.make_refine"
        )
    if rm is not None and not hasattr(rm, "config"):
        raise TypeError(
            f"rm must be a nabla-jax RewardModel or CausalLM here, got {type(rm).__name__}; for "
            "a callable reward use nj.functional.make_refine"
        )


def _place_models(lm, rm, rm_embed, mesh, batch_size):
    """``(lm, rm, rm_table)``, split over ``mesh`` ("data", "model") when one is given."""
    if mesh is not None:
        sharding.check_batch_divisible(batch_size, mesh)
        lm, rm, _ = partition.shard_refine_models(lm, rm, None, mesh)
    table = rm_embedding_table(lm, rm, rm_embed)
    if mesh is not None:
        _, _, table = partition.shard_refine_models(None, None, table, mesh)
    return lm, rm, table


def _check_result(trace: RefineTrace, cfg: DTOConfig, rows: list[int]):
    nonfinite = np.asarray(trace.nonfinite)
    if nonfinite.any() and cfg.on_nonfinite == "raise":
        step, col = np.argwhere(nonfinite)[0]
        raise FloatingPointError(
            f"non-finite DTO loss at step {int(step)} (0-based) of problem {rows[col]}; lower "
            "learning_rate, check the models' dtype, or set on_nonfinite='flag' to keep going"
        )
    kl = np.asarray(trace.kl_collapse)
    if cfg.objective == "article" and kl.any():
        step, col = np.argwhere(kl)[0]
        warnings.warn(
            f"KL above {cfg.kl_warn_threshold} nats at step {int(step)} of problem {rows[col]}: "
            "the refinement is drifting from the reference distribution (collapse); lower "
            "learning_rate or raise lambda_kl",
            stacklevel=3,
        )


def refine_batch(
    lm: CausalLM,
    rm,
    problems: list[RefineProblem],
    cfg: DTOConfig,
    key,
    *,
    batch_size: int = 8,
    rm_embed=None,
    mesh=None,
    problem_keys=None,
) -> list[RefineResult]:
    """Refine many windows (prompts of different lengths) with bucketed shapes.

    Problems are grouped by their bucketed shapes and run ``batch_size`` at a time (a short
    group is padded with masked rows), so mixed lengths compile one program per bucket. Every
    problem uses ``key`` (for Gumbel noise), so each result equals ``refine`` of that problem.

    Args:
      lm, rm: the policy and the reward model (rm may be None when reward_coeff is 0).
      problems: the windows to refine.
      cfg: a ``DTOConfig``.
      key: ``jax.random`` key.
      batch_size: rows per compiled call.
      rm_embed: ``[V_lm, D_rm]`` aligned RM embeddings when the tokenizers differ.
      mesh: a ``jax.sharding.Mesh`` with axes ("data", "model") (``nj.sharding.make_mesh``):
        each padded batch is split over "data" (``batch_size`` must divide by its size) and
        the models' parameters over "model"; the same program runs under GSPMD.
      problem_keys: optional list of one key per problem, used instead of ``key`` (so a
        problem's Gumbel noise can follow its own counters, independent of its company).
    Returns:
      one ``RefineResult`` per problem, in input order (arrays without a batch axis).
    """
    if not problems:
        raise ValueError("refine_batch needs at least one RefineProblem")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    _check_host_api(lm, rm, cfg)
    check_rm_ids(rm, problems)
    lm, rm, table = _place_models(lm, rm, rm_embed, mesh, batch_size)
    results: list[RefineResult | None] = [None] * len(problems)
    for rows in plan_chunks(problems, batch_size):
        batch = pad_problems(lm, [problems[i] for i in rows], cfg, batch_size)
        keys = _chunk_keys(key, problem_keys, rows, batch_size, len(problems))
        if mesh is not None:
            batch, keys = sharding.shard_batch((batch, keys), mesh)
        logits, final, trace = refine_rows_jit(
            lm, rm, table, batch, keys, cfg.hyper(), cfg=cfg.program()
        )
        host = jax.tree.map(np.asarray, trace)
        n = len(rows)
        _check_result(jax.tree.map(lambda a, n=n: a[:, :n] if a.ndim == 2 else a, host), cfg, rows)
        for j, i in enumerate(rows):
            k = np.asarray(problems[i].init).shape[0]
            row_trace = RefineTrace(*[a[:, j] if a.ndim == 2 else a for a in host])
            results[i] = RefineResult(
                logits=logits[j, :k],
                tokens=final.tokens[j, :k],
                latents=final.params[j, :k] if cfg.mode == "latents" else None,
                trace=row_trace,
                model_calls=int(final.full_steps[j]) * cfg.calls_per_full_step,
                full_steps=int(final.full_steps[j]),
                batch_full_steps=int(final.batch_full_steps),
            )
    return results


def _chunk_keys(key, problem_keys, rows, batch_size, n_problems):
    """Keys ``[batch_size]`` of one chunk: ``key`` for every row, or each problem's own key."""
    if problem_keys is None:
        return jnp.stack([key] * batch_size)
    if len(problem_keys) != n_problems:
        raise ValueError(
            f"problem_keys has {len(problem_keys)} keys for {n_problems} problems: give one each"
        )
    chosen = [problem_keys[i] for i in rows]
    return jnp.stack(chosen + [chosen[0]] * (batch_size - len(rows)))


def window_grad_norms(
    lm: CausalLM,
    rm,
    problems: list[RefineProblem],
    cfg: DTOConfig,
    key=None,
    *,
    batch_size: int = 8,
    rm_embed=None,
    mesh=None,
    problem_keys=None,
) -> list[np.ndarray]:
    """The gradient-selection probe: ``‖∂loss/∂y_k‖₂`` for every window position.

    One forward and backward of the DTO loss (``cfg``'s objective, LM and RM terms) at the
    initial window ``y = st_softmax(init)`` — what the first DTO step sees — differentiated
    with respect to the relaxed one-hot ``y [K, V]`` itself (not the logits), so every
    position gets its norm whatever ``update_postfix`` says. It costs
    ``cfg.calls_per_full_step`` model calls per problem (LM fwd+bwd, RM fwd+bwd), which the
    caller must count (the public code does not).

    Args:
      lm, rm, problems, cfg, batch_size, rm_embed: as in :func:`refine_batch`.
      key: ``jax.random`` key for Gumbel noise (unused without it; default key 0).
      mesh: as in :func:`refine_batch`.
      problem_keys: optional per-problem keys, used instead of ``key``.
    Returns:
      one ``[K]`` float32 numpy array per problem, in input order.
    """
    if not problems:
        raise ValueError("window_grad_norms needs at least one RefineProblem")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    _check_host_api(lm, rm, cfg)
    check_rm_ids(rm, problems)
    lm, rm, table = _place_models(lm, rm, rm_embed, mesh, batch_size)
    key = jax.random.key(0) if key is None else key
    out: list[np.ndarray | None] = [None] * len(problems)
    for rows in plan_chunks(problems, batch_size):
        batch = pad_problems(lm, [problems[i] for i in rows], cfg, batch_size)
        keys = _chunk_keys(key, problem_keys, rows, batch_size, len(problems))
        if mesh is not None:
            batch, keys = sharding.shard_batch((batch, keys), mesh)
        norms = np.asarray(
            grad_norms_rows_jit(lm, rm, table, batch, keys, cfg.hyper(), cfg=cfg.program())
        )
        for j, i in enumerate(rows):
            out[i] = norms[j, : np.asarray(problems[i].init).shape[0]]
    return out


def refine(lm: CausalLM, rm, problem: RefineProblem, cfg: DTOConfig, key, *, rm_embed=None):
    """Refine one ahead window; see ``refine_batch`` (this is a batch of one)."""
    return refine_batch(lm, rm, [problem], cfg, key, batch_size=1, rm_embed=rm_embed)[0]


def compiled_programs() -> int:
    """How many refinement programs have been compiled in this process (for tests)."""
    return refine_rows_jit._cache_size()
