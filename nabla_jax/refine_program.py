"""The DTO program: every optimizer step of every row in one ``lax.scan``, traceable anywhere.

:func:`refine_padded` refines a :class:`~nabla_jax.refine_batching.PaddedProblems` batch; it does
no host work, so it runs inside the host API's ``jax.jit`` (:data:`refine_padded_jit`) and inside
the compiled ∇-Reasoner decode loop alike. Its structure comes from a ``DTOConfig`` reduced by
``DTOConfig.program()`` (static); its numbers — learning rate, Adam moments, schedule floor and
warmup, loss coefficients, temperature, Gumbel scale — come from a :class:`DTOHyper` of run-time
scalars, so a sweep over them reuses one compiled program.

Layout: the LM prefix ``[B, P]`` and the RM prefix ``[B, Q]`` may hold gaps (any 0/1 mask; the
last real token need not be the last slot); positions follow the masks. The committed prefix's
keys/values (LM and RM) are computed once per call, before the scan; each step runs the models on
the window (and the RM suffix) only.

Batched gradient caching: ``lax.cond`` under ``vmap`` would run both branches, so the batch is
not vmapped over the models. Each row keeps its own cached gradient and validity; one
un-vmapped ``lax.cond`` per step skips the models whenever *no* row needs a full step. A row
whose cache is valid uses its cached gradient even when another row forces a full step, so every
row follows exactly the path it would follow alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nabla_jax.dto_config import DTOConfig, DTOHyper
from nabla_jax.refine_batching import PaddedProblems
from nabla_jax.refine_context import PrefixCaches, kl_rows, lm_loglik, prepare_context, rm_reward
from nabla_jax.ste import st_softmax, ste_argmax

__all__ = [
    "PrefixCaches",
    "RefineTrace",
    "grad_norms_padded",
    "grad_norms_padded_jit",
    "refine_padded",
    "refine_padded_jit",
    "uses_rm",
]


class RefineTrace(NamedTuple):
    """Per-step record; every field is ``[num_steps]`` (``[num_steps, B]`` from refine_batch).

    loss: value back-propagated (full loss, or the cached-gradient surrogate ⟨g, y⟩ + KL term).
    reward, loglik: of the latest full step. kl: KL term of the window logits vs the reference.
    lr: learning rate used. full_step: the models ran for this row. tokens_changed: positions
    whose argmax changed. kl_collapse: kl above the threshold. nonfinite: the loss was not finite.
    """

    loss: Any
    reward: Any
    loglik: Any
    kl: Any
    lr: Any
    full_step: Any
    tokens_changed: Any
    kl_collapse: Any
    nonfinite: Any


class RefineCarry(NamedTuple):
    """The scan's state; ``[B, ...]`` per row (``batch_full_steps`` is a scalar)."""

    params: jax.Array  # [B, K, V | D] window logits or latents (window_dtype)
    opt_state: Any
    g_cache: jax.Array  # [B, K, V] ∂loss/∂y of the last full step
    cache_valid: jax.Array  # [B] bool
    tokens: jax.Array  # [B, K] argmax of the current window logits
    reward: jax.Array  # [B] of the last full step
    loglik: jax.Array  # [B]
    halted: jax.Array  # [B] bool: stopped on a non-finite loss
    full_steps: jax.Array  # [B] int32
    batch_full_steps: jax.Array  # [] int32: steps in which the models ran at all


def uses_rm(rm, cfg: DTOConfig) -> bool:
    """Whether the reward model takes part in the loss (static)."""
    return rm is not None and (cfg.objective == "article" or cfg.reward_coeff != 0)


def _to_logits(lm, params, cfg):
    """Window logits ``[B, K, V]`` (float32) from the parameters (logits or latents)."""
    z = params if cfg.mode == "logits" else lm.head_logits(params)
    return z.astype(jnp.float32)


def _st(z, keys, step, cfg, h: DTOHyper):
    """Straight-through relaxation of ``z [B, K, V]``; Gumbel keys folded with the step."""
    if cfg.objective == "article":
        return ste_argmax(z)
    if cfg.gumbel_scale > 0:  # static: the program keeps only whether noise is drawn
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        return jax.vmap(lambda zz, kk: st_softmax(zz, h.tau, cfg.hard, kk, h.gumbel_scale))(
            z, step_keys
        )
    return st_softmax(z, h.tau, cfg.hard)


def _model_loss_rows(lm, rm, ctx, batch, y, rm_table, cfg: DTOConfig, h: DTOHyper):
    """The models' part of the loss per row: ``(loss [B], loglik [B], reward [B])``."""
    b = y.shape[0]
    use_rm = uses_rm(rm, cfg)
    reward = rm_reward(rm, ctx, batch, y, rm_table, cfg) if use_rm else jnp.zeros(b)
    if cfg.objective == "paper":
        loglik = lm_loglik(lm, ctx, batch, y, cfg, h.nll_coeff)
        loss = -(loglik + h.reward_coeff * reward)
    else:
        loglik = jnp.zeros(b)
        loss = -reward
    return loss, loglik, reward


def refine_padded(lm, rm, rm_table, batch: PaddedProblems, keys, h: DTOHyper, cfg: DTOConfig,
                  prefixes: PrefixCaches | None = None):  # fmt: skip
    """Refine a padded batch (traceable; no host work).

    Args:
      lm, rm: the policy and the reward network (rm may be None without a reward term).
      rm_table: ``[V_lm, D_rm]`` RM embedding rows indexed by LM token id (None without rm).
      batch: the windows and their contexts, ``B`` rows.
      keys: ``[B]`` PRNG keys (Gumbel noise only).
      h: run-time hyperparameters (``cfg.hyper()``).
      cfg: the static structure (``cfg.program()``; the numbers are read from ``h``).
      prefixes: the prefixes' keys/values when the caller has them (the decoder does); else
        they are computed here (``batch``'s prefix ids).

    Returns:
      ``(logits [B, K, V] float32, final RefineCarry, RefineTrace [S, B])``.
    """
    ctx = prepare_context(lm, rm, batch, cfg, prefixes)
    tx = cfg.optax_transform(h)
    params0 = batch.init.astype(cfg.window_dtype)
    win = batch.window_mask
    pos_mask = win if cfg.update_postfix else win * (jnp.arange(win.shape[1]) == 0)
    grad_mask = pos_mask[..., None].astype(params0.dtype)
    valid_rows = batch.row_valid
    kl_apply = cfg.objective == "article"

    def model_terms(y):
        """(Σ_b loss_b, (loglik [B], reward [B], loss [B])) of the models' part of the loss."""
        loss, loglik, reward = _model_loss_rows(lm, rm, ctx, batch, y, rm_table, cfg, h)
        return jnp.sum(loss * valid_rows), (loglik, reward, loss)

    def kl_term(params):
        if cfg.objective != "article" and cfg.lambda_kl == 0:
            return jnp.zeros(params.shape[0])
        return kl_rows(_to_logits(lm, params, cfg), batch.ref_logits, win, cfg.kl_direction)

    def step(carry: RefineCarry, step_index):
        y = _st(_to_logits(lm, carry.params, cfg), keys, step_index, cfg, h)
        need_full = ~(cfg.grad_caching & carry.cache_valid)
        run_models = jnp.any(need_full & (valid_rows > 0))

        def full(_):
            (_, (loglik, reward, loss)), gy = jax.value_and_grad(model_terms, has_aux=True)(y)
            return gy, loglik, reward, loss

        def cached(_):
            b = y.shape[0]
            return carry.g_cache, jnp.zeros(b), jnp.zeros(b), jnp.zeros(b)

        gy_full, loglik_f, reward_f, loss_f = jax.lax.cond(run_models, full, cached, None)
        rowsel = need_full[:, None, None]
        gy = jnp.where(rowsel, gy_full, carry.g_cache)
        loglik = jnp.where(need_full, loglik_f, carry.loglik)
        reward = jnp.where(need_full, reward_f, carry.reward)
        surrogate_loss = jnp.sum(gy * y, axis=(1, 2))

        def param_objective(params):
            yy = _st(_to_logits(lm, params, cfg), keys, step_index, cfg, h)
            lin = jnp.sum(jax.lax.stop_gradient(gy) * yy)
            kl = kl_term(params)
            total = lin + (h.lambda_kl * jnp.sum(kl * valid_rows) if kl_apply else 0.0)
            return total, kl

        (_, kl), grads = jax.value_and_grad(param_objective, has_aux=True)(carry.params)
        kl_loss = h.lambda_kl * kl if kl_apply else jnp.zeros_like(kl)
        loss = jnp.where(need_full, loss_f, surrogate_loss) + kl_loss
        grads = grads * grad_mask
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        # The optimizer's state keeps the window's dtype (bfloat16 windows: as torch's Adam on a
        # bfloat16 parameter); run-time float32 hyperparameters would otherwise promote it.
        opt_state = jax.tree.map(lambda a, b: a.astype(b.dtype), opt_state, carry.opt_state)
        new_params = optax.apply_updates(carry.params, updates).astype(carry.params.dtype)
        nonfinite = ~jnp.isfinite(loss) | carry.halted
        new_params = jnp.where(nonfinite[:, None, None], carry.params, new_params)
        tokens = jnp.argmax(_to_logits(lm, new_params, cfg), axis=-1)
        changed = jnp.sum((tokens != carry.tokens) & (win > 0), axis=-1)
        if cfg.grad_caching:
            g_cache = jnp.where(rowsel, gy_full, carry.g_cache).astype(jnp.float32)
            cache_valid = (carry.cache_valid | need_full) & (changed == 0)
        else:
            g_cache, cache_valid = carry.g_cache, carry.cache_valid
        new_carry = RefineCarry(
            new_params, opt_state, g_cache, cache_valid, tokens, reward, loglik, nonfinite,
            carry.full_steps + need_full.astype(jnp.int32),
            carry.batch_full_steps + run_models.astype(jnp.int32),
        )  # fmt: skip
        record = RefineTrace(
            loss=loss,
            reward=reward,
            loglik=loglik,
            kl=kl,
            lr=cfg.learning_rate_at(step_index, h),
            full_step=need_full,
            tokens_changed=changed,
            kl_collapse=kl > h.kl_warn_threshold,
            nonfinite=~jnp.isfinite(loss),
        )
        return new_carry, record

    b = params0.shape[0]
    zeros_b = jnp.zeros(b, jnp.float32)
    v = batch.ref_logits.shape[-1]
    carry0 = RefineCarry(
        params=params0,
        opt_state=tx.init(params0),
        g_cache=jnp.zeros(params0.shape[:2] + (v,), jnp.float32),
        cache_valid=jnp.zeros(b, bool),
        tokens=jnp.argmax(_to_logits(lm, params0, cfg), axis=-1),
        reward=zeros_b,
        loglik=zeros_b,
        halted=jnp.zeros(b, bool),
        full_steps=jnp.zeros(b, jnp.int32),
        batch_full_steps=jnp.zeros((), jnp.int32),
    )
    final, trace = jax.lax.scan(step, carry0, jnp.arange(cfg.num_steps))
    return _to_logits(lm, final.params, cfg), final, trace


def grad_norms_padded(lm, rm, rm_table, batch: PaddedProblems, keys, h: DTOHyper, cfg: DTOConfig,
                      prefixes: PrefixCaches | None = None):  # fmt: skip
    """``‖∂loss/∂y_k‖₂`` per window position ``[B, K]`` (0 on padding) at the initial window.

    The probe of the gradient-selection rule: one forward and backward of the models' loss at
    ``y = relax(init)``, differentiated with respect to ``y`` itself (traceable).
    """
    ctx = prepare_context(lm, rm, batch, cfg, prefixes)
    y = _st(_to_logits(lm, batch.init.astype(cfg.window_dtype), cfg), keys, 0, cfg, h)

    def total(yy):
        loss, _, _ = _model_loss_rows(lm, rm, ctx, batch, yy, rm_table, cfg, h)
        return jnp.sum(loss * batch.row_valid)

    gy = jax.grad(total)(y)
    return jnp.linalg.norm(gy, axis=-1) * batch.window_mask


refine_padded_jit = jax.jit(refine_padded, static_argnames=("cfg",))
grad_norms_padded_jit = jax.jit(grad_norms_padded, static_argnames=("cfg",))
