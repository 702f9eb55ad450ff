"""The refinement core as pure functions: compose it with ``jit``, ``vmap``, ``grad``, sharding.

* :func:`pack` — ``RefineProblem``s to a fixed-shape pytree with a leading prompt axis (host side,
  validated once).
* :func:`make_refine` — ``refine_one(packed, key, hyper=None) -> (logits, trace)``, pure.
* :func:`refine_rows` — the batched program (one ``lax.scan``; gradient caching skips the models
  when no row needs them), what ``refine``, ``refine_batch`` and ``NablaDecoder`` run.
* :func:`init_state`, :func:`dto_step` — its parts, for your own loops; :func:`prepare_context`
  computes the prefixes' keys/values once.
* :func:`paper_optimizer` — the paper's Adam + schedule as an optax transformation with injected
  hyperparameters; any ``optax.GradientTransformation`` may replace it.
* :class:`EmbeddingReward`, :class:`EmbeddingLM` — your own differentiable reward / policy as a
  function of embeddings.
* :func:`resolve_rm_vocabulary`, :func:`rm_soft_embeds`, :func:`map_token_ids` — a reward model
  with another vocabulary, through an LM-id → RM-id table (docs/reward-models.md).
* :func:`aggregate_steps` — per-step (process) reward scores ``[B, S]`` to one reward ``[B]``.

docs/functional.md walks through it.
"""

from nabla_jax.functional.checks import check_models, check_rm_ids, rm_embedding_table
from nabla_jax.functional.context import Context, PrefixCaches, prepare_context
from nabla_jax.functional.optimizer import paper_optimizer
from nabla_jax.functional.packing import PackSizes, PaddedProblems, pack
from nabla_jax.functional.pluggable import EmbeddingLM, EmbeddingReward
from nabla_jax.functional.program import (
    grad_norms_rows,
    grad_norms_rows_jit,
    refine_rows,
    refine_rows_jit,
)
from nabla_jax.functional.refine_one import make_refine
from nabla_jax.functional.step import DTOState, RefineTrace, dto_step, init_state, window_logits
from nabla_jax.functional.step_scores import AGGREGATIONS, aggregate_steps, soft_min_steps
from nabla_jax.functional.vocab_map import (
    RMVocabulary,
    map_token_ids,
    mapped_rm_embeddings,
    resolve_rm_vocabulary,
    rm_soft_embeds,
)

__all__ = [
    "AGGREGATIONS",
    "Context",
    "DTOState",
    "EmbeddingLM",
    "EmbeddingReward",
    "PackSizes",
    "PaddedProblems",
    "PrefixCaches",
    "RMVocabulary",
    "RefineTrace",
    "aggregate_steps",
    "check_models",
    "check_rm_ids",
    "dto_step",
    "grad_norms_rows",
    "grad_norms_rows_jit",
    "init_state",
    "make_refine",
    "map_token_ids",
    "mapped_rm_embeddings",
    "pack",
    "paper_optimizer",
    "prepare_context",
    "refine_rows",
    "refine_rows_jit",
    "resolve_rm_vocabulary",
    "rm_embedding_table",
    "rm_soft_embeds",
    "soft_min_steps",
    "window_logits",
]
