"""``make_refine``: one prompt's refinement as a pure function for your own jit / vmap / grad.

>>> refine_one = make_refine(lm, rm, DTOConfig())
>>> packed = pack(lm, problems)                      # host side, validated once
>>> logits, trace = jax.jit(jax.vmap(refine_one))(packed, keys)

``refine_one(packed, key, hyper=None)`` takes one row of a :func:`~nabla_jax.functional.pack`
(no prompt axis) and returns ``(logits [K, V], RefineTrace with [S] fields)``. It makes no host
transfers and no Python-side checks (those ran in ``make_refine`` and ``pack``). The models,
the reward and the optimizer are closed over; ``hyper`` (a ``DTOHyper``) carries the numbers,
so ``jax.vmap`` over ``hyper.learning_rate`` sweeps learning rates in one program.

Gradient caching under ``vmap``: the one-row program skips the models with a ``lax.cond`` while
the row's cached gradient is valid, and JAX's generic batching would turn that ``cond`` into a
``select`` that runs both branches. So ``refine_one`` carries its own batching rule
(``jax.custom_batching.custom_vmap``): ``jax.vmap`` over prompts runs the batched program
``refine_rows`` (one ``cond`` per step for all rows, the skip kept), and a ``vmap`` over
``hyper`` falls back to generic batching. ``jax.grad`` differentiates the plain one-row program
(a ``custom_jvp``). docs/functional.md gives the measured costs.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import optax
from jax.custom_batching import custom_vmap

from nabla_jax.functional.checks import check_models, rm_embedding_table
from nabla_jax.functional.dto_config import DTOConfig, DTOHyper
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
                rm_embed=None, vmap_rule: bool = True):  # fmt: skip
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
      vmap_rule: under ``jax.vmap`` over prompts, run the batched program ``refine_rows`` (one
        ``lax.cond`` per step for all rows keeps the gradient-caching skip; the layout is the
        decoder's). False: JAX's generic batching of the one-row program, whose ``cond``
        becomes a ``select`` that runs the models at every step. Either way the numbers are the
        same, and ``jax.grad`` differentiates the one-row program.

    Returns:
      ``refine_one(packed, key, hyper=None) -> (logits [K, V] float32, RefineTrace [S])`` — pure;
      jit, vmap (over prompts and/or ``hyper``), grad and shard it. A non-finite loss halts the
      row and sets ``trace.nonfinite`` (there is no host to raise from).

    Raises:
      TypeError: a model, reward or optimizer of the wrong type (before anything is traced).
      ValueError: a reward form that does not fit the reward, a callable reward without its
        table, a table of the wrong size.
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

    def rows_program(packed, keys, h):
        """``refine_rows`` on ``[B]`` rows, trace as ``[B, S]``."""
        logits, _, trace = refine_rows(lm, rm, table, packed, keys, h, cfg, None, optimizer)
        return logits, RefineTrace(*(a.T for a in trace))

    def one_row(packed, key, h):
        rows = jax.tree.map(lambda a: a[None], packed)
        logits, trace = rows_program(rows, key[None], h)
        return logits[0], RefineTrace(*(a[0] for a in trace))

    @custom_vmap
    def batched_aware(packed, key, h):
        return one_row(packed, key, h)

    @batched_aware.def_vmap
    def _vmap_rule(axis_size, in_batched, packed, key, h):
        packed_b, key_b, h_b = in_batched
        out_batched = (True, RefineTrace(*([True] * len(RefineTrace._fields))))
        if any(jax.tree.leaves(h_b)):  # a sweep over hyperparameters: vmap the one-row program
            axes = jax.tree.map(lambda b: 0 if b else None, (packed_b, key_b, h_b))
            return jax.vmap(one_row, in_axes=axes)(packed, key, h), out_batched
        grow = lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)  # noqa: E731
        packed = jax.tree.map(grow, packed, packed_b)
        key = grow(key, key_b)
        return rows_program(packed, key, h), out_batched

    @jax.custom_jvp
    def refine_core(packed, key, h):
        return batched_aware(packed, key, h) if vmap_rule else one_row(packed, key, h)

    @refine_core.defjvp
    def _jvp(primals, tangents):  # differentiate the plain one-row program
        return jax.jvp(one_row, primals, tangents)

    def refine_one(packed: PaddedProblems, key, hyper: DTOHyper | None = None):
        """One prompt: ``packed`` without a prompt axis, ``key`` a PRNG key (Gumbel noise).

        Returns ``(logits [K, V] float32, RefineTrace with [S] fields)``.
        """
        chex.assert_rank(
            [packed.init, packed.window_mask, packed.lm_prefix_ids], [2, 1, 1],
            custom_message="refine_one takes one row of a pack: take it with "
            "jax.tree.map(lambda a: a[i], packed), or jax.vmap over the pack's leading axis",
        )  # fmt: skip
        h = default_hyper if hyper is None else hyper
        return refine_core(packed, key, jax.tree.map(jnp.asarray, h))

    return refine_one
