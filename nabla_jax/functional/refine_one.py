"""``make_refine``: one prompt's refinement as a pure function for your own jit / vmap / grad.

>>> refine_one = make_refine(lm, rm, DTOConfig())
>>> packed = pack(lm, problems)                      # host side, validated once
>>> logits, trace = jax.jit(jax.vmap(refine_one))(packed, keys)

``refine_one(packed, key, hyper=None)`` takes one row of a :func:`~nabla_jax.functional.pack`
(no prompt axis) and returns ``(logits [K, V], RefineTrace with [S] fields)``. It makes no host
transfers and no Python-side checks (those ran in ``make_refine`` and ``pack``). The models,
the reward and the optimizer are closed over; ``hyper`` (a ``DTOHyper``) carries the numbers,
so ``jax.vmap`` over ``hyper.learning_rate`` sweeps learning rates in one program.

Gradient caching under ``vmap``: ``refine_one`` runs the one-row program, whose ``lax.cond``
skips the models when the row's cached gradient is valid. ``jax.vmap`` turns that ``cond`` into a
``select`` that evaluates both branches, so under ``vmap`` the results are the same (caching stays
correct) but the models run at every step. ``refine_rows`` (the batched program) keeps the skip:
one ``cond`` per step over the whole batch. See docs/functional.md for the measured cost.
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from nabla_jax.dto_config import DTOConfig, DTOHyper
from nabla_jax.functional.checks import check_models, rm_embedding_table
from nabla_jax.functional.packing import PaddedProblems
from nabla_jax.functional.pluggable import EmbeddingReward
from nabla_jax.functional.program import refine_rows
from nabla_jax.functional.step import RefineTrace
from nabla_jax.models.model import CausalLM, RewardModel

__all__ = ["make_refine"]


def _as_reward(reward, reward_table):
    """An nabla-jax model passes through; a callable becomes an ``EmbeddingReward``."""
    if reward is None or isinstance(reward, (RewardModel, CausalLM, EmbeddingReward)):
        if reward_table is not None and isinstance(reward, EmbeddingReward):
            raise ValueError("an EmbeddingReward carries its table: do not pass reward_table")
        return reward
    if callable(reward):
        if reward_table is None:
            raise ValueError(
                "a callable reward needs the embedding table it reads: "
                "make_refine(lm, fn, cfg, reward_table=table [V, D])"
            )
        return EmbeddingReward(reward, reward_table)
    raise TypeError(
        f"reward must be a RewardModel, a CausalLM, an EmbeddingReward or a callable "
        f"(inputs_embeds [B, T, D], mask [B, T]) -> [B]; got {type(reward).__name__}"
    )


def make_refine(lm, reward, cfg: DTOConfig | None = None,
                optimizer: optax.GradientTransformation | None = None, *, reward_table=None,
                rm_embed=None):  # fmt: skip
    """A pure one-prompt refinement closed over the models, the config and the optimizer.

    Args:
      lm: the policy: a nabla-jax ``CausalLM`` or an ``EmbeddingLM``.
      reward: a nabla-jax ``RewardModel`` (or causal-LM reward network for the article
        objective), an ``EmbeddingReward``, a callable ``(inputs_embeds [B, T, D], mask [B, T])
        -> [B]`` with ``reward_table``, or None when ``cfg.reward_coeff == 0``.
      cfg: the ``DTOConfig`` (default ``DTOConfig()``); its numbers are the default ``hyper``.
      optimizer: any ``optax.GradientTransformation``; default the paper's Adam with the cosine
        schedule (``paper_optimizer``), whose numbers come from ``hyper``. A custom optimizer
        carries its own numbers: build it inside your vmapped function to sweep them.
      reward_table: ``[V_lm, D]`` the embedding rows a callable reward reads.
      rm_embed: ``[V_lm, D_rm]`` aligned RM embeddings when the tokenizers differ.

    Returns:
      ``refine_one(packed, key, hyper=None) -> (logits [K, V] float32, RefineTrace [S])`` — pure;
      jit, vmap (over prompts and/or ``hyper``), grad and shard it. A non-finite loss halts the
      row and sets ``trace.nonfinite`` (there is no host to raise from).

    Raises:
      TypeError / ValueError before anything is traced: wrong model types, a reward form that
      does not fit the reward, a callable reward without its table.
    """
    cfg = DTOConfig() if cfg is None else cfg
    rm = _as_reward(reward, reward_table)
    check_models(lm, rm, cfg, stacklevel=3)
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if cfg.on_nonfinite == "raise":
        # Inside a traced function nothing can raise on a value: the row halts and is flagged.
        cfg = dataclasses.replace(cfg, on_nonfinite="flag")
    table = rm_embedding_table(lm, rm, rm_embed)
    default_hyper = cfg.hyper()

    def refine_one(packed: PaddedProblems, key, hyper: DTOHyper | None = None):
        """One prompt: ``packed`` without a prompt axis, ``key`` a PRNG key (Gumbel noise).

        Returns ``(logits [K, V] float32, RefineTrace with [S] fields)``.
        """
        h = default_hyper if hyper is None else hyper
        rows = jax.tree.map(lambda a: a[None], packed)
        logits, _, trace = refine_rows(lm, rm, table, rows, key[None], h, cfg, None, optimizer)
        return logits[0], RefineTrace(*(a[:, 0] for a in trace))

    return refine_one
