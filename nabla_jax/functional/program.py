"""The DTO program: every optimizer step of every row in one ``lax.scan``, traceable anywhere.

:func:`refine_rows` refines a :class:`~nabla_jax.functional.packing.PaddedProblems` batch; it does
no host work, so it runs inside the host API's ``jax.jit`` (:data:`refine_rows_jit`), inside the
compiled ∇-Reasoner decode loop, and inside yours. Its structure comes from a ``DTOConfig``
reduced by ``DTOConfig.program()`` (static); its numbers — learning rate, Adam moments, schedule
floor and warmup, loss coefficients, temperature, Gumbel scale — from a ``DTOHyper`` of run-time
scalars, so a sweep over them reuses one compiled program.

Layout: the LM prefix ``[B, P]`` and the RM prefix ``[B, Q]`` may hold gaps (any 0/1 mask; the
last real token need not be the last slot); positions follow the masks. The committed prefix's
keys/values (LM and RM) are computed once per call, before the scan; each step runs the models on
the window (and the RM suffix) only.

:func:`make_refine` closes the models and the configuration over a one-prompt function for
``jax.vmap`` / ``jax.jit`` / ``jax.grad`` / sharding (docs/functional.md).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from nabla_jax.functional.context import PrefixCaches, prepare_context
from nabla_jax.functional.dto_config import DTOHyper, DTOProgram
from nabla_jax.functional.optimizer import paper_optimizer
from nabla_jax.functional.packing import PaddedProblems
from nabla_jax.functional.step import (
    dto_step,
    init_state,
    model_loss_rows,
    relax_window,
    window_logits,
)

__all__ = [
    "check_batch",
    "grad_norms_rows",
    "grad_norms_rows_jit",
    "refine_rows",
    "refine_rows_jit",
]


def check_batch(batch: PaddedProblems) -> None:
    """Static shape and dtype checks of a batch of rows (at trace time, before any compute)."""
    chex.assert_rank(
        [batch.lm_prefix_ids, batch.rm_prefix_ids, batch.rm_suffix_ids, batch.init,
         batch.window_mask, batch.ref_logits, batch.row_valid],
        [2, 2, 2, 3, 2, 3, 1],
    )  # fmt: skip
    chex.assert_equal_shape([batch.lm_prefix_ids, batch.lm_prefix_mask])
    chex.assert_equal_shape([batch.rm_prefix_ids, batch.rm_prefix_mask])
    chex.assert_equal_shape([batch.rm_suffix_ids, batch.rm_suffix_mask])
    chex.assert_equal_shape_prefix([batch.init, batch.window_mask, batch.ref_logits], 2)
    chex.assert_equal_shape_prefix([batch.lm_prefix_ids, batch.init, batch.row_valid], 1)
    chex.assert_type([batch.lm_prefix_ids, batch.rm_prefix_ids, batch.rm_suffix_ids], int)
    chex.assert_type([batch.init, batch.ref_logits], float)


def refine_rows(lm, rm, rm_table, batch: PaddedProblems, keys, h: DTOHyper, cfg: DTOProgram,
                prefixes: PrefixCaches | None = None,
                optimizer: optax.GradientTransformation | None = None):  # fmt: skip
    """Refine a padded batch (traceable; no host work).

    Args:
      lm, rm: the policy and the reward (rm may be None without a reward term); nabla-jax models,
        or an ``EmbeddingLM`` / ``EmbeddingReward``.
      rm_table: ``[V_lm, D_rm]`` RM embedding rows indexed by LM token id (None without rm, or for
        an ``EmbeddingReward``, which brings its own).
      batch: the windows and their contexts, ``B`` rows.
      keys: ``[B]`` PRNG keys (Gumbel noise only).
      h: run-time hyperparameters (``cfg.hyper()``).
      cfg: the static structure (``cfg.program()``; the numbers are read from ``h``).
      prefixes: the prefixes' keys/values when the caller has them (the decoder does); else
        they are computed here (``batch``'s prefix ids).
      optimizer: any ``optax.GradientTransformation``; default the paper's
        (``paper_optimizer(cfg, h)``).

    Returns:
      ``(logits [B, K, V] float32, final DTOState, RefineTrace [S, B])``.
    """
    check_batch(batch)
    ctx = prepare_context(lm, rm, batch, cfg, prefixes, rm_table)
    tx = paper_optimizer(cfg, h) if optimizer is None else optimizer
    state0 = init_state(lm, batch, cfg, tx)

    def step(state, step_index):
        return dto_step(
            lm, rm, ctx=ctx, batch=batch, state=state, keys=keys, step_index=step_index,
            cfg=cfg, h=h, optimizer=tx, paper_lr=optimizer is None,
        )  # fmt: skip

    final, trace = jax.lax.scan(step, state0, jnp.arange(cfg.num_steps))
    return window_logits(lm, final.params, cfg), final, trace


def grad_norms_rows(lm, rm, rm_table, batch: PaddedProblems, keys, h: DTOHyper, cfg: DTOProgram,
                    prefixes: PrefixCaches | None = None):  # fmt: skip
    """``‖∂loss/∂y_k‖₂`` per window position ``[B, K]`` (0 on padding) at the initial window.

    The probe of the gradient-selection rule: one forward and backward of the models' loss at
    ``y = relax(init)``, differentiated with respect to ``y`` itself (traceable).
    """
    check_batch(batch)
    ctx = prepare_context(lm, rm, batch, cfg, prefixes, rm_table)
    y = relax_window(window_logits(lm, batch.init.astype(cfg.window_dtype), cfg), keys, 0, cfg, h)

    def total(yy):
        loss, _, _ = model_loss_rows(lm, rm, ctx, batch, yy, cfg, h)
        return jnp.sum(loss * batch.row_valid)

    gy = jax.grad(total)(y)
    return jnp.linalg.norm(gy, axis=-1) * batch.window_mask


refine_rows_jit = jax.jit(refine_rows, static_argnames=("cfg",))
grad_norms_rows_jit = jax.jit(grad_norms_rows, static_argnames=("cfg",))
