"""One DTO optimizer step over a batch of windows: :func:`init_state` and :func:`dto_step`.

These are the pieces of the refinement scan (:func:`nabla_jax.functional.refine_rows`), exposed
for people who write their own loops. Everything is traceable and shape-stable; nothing goes to
the host. A step:

1. relaxes the window ``y = st(z)`` (hard straight-through softmax, or the article's argmax);
2. runs the models on ``y`` — the LM's log-likelihood and the reward — and takes ``∂loss/∂y``,
   unless every row's cached gradient is still valid (gradient caching: no argmax in the window
   changed since the last full step), in which case the models are skipped;
3. back-propagates the linear surrogate ``⟨∂loss/∂y, st(z)⟩`` (+ the KL term of the article
   objective) to the window parameters and applies the optimizer.

Batched gradient caching: ``lax.cond`` under ``vmap`` runs both branches, so the rows are not
vmapped over the models here. Each row keeps its own cached gradient and validity; one
un-vmapped ``lax.cond`` per step skips the models when *no* row needs them, and a row whose cache
is valid uses its cached gradient even when another row forces a full step — so every row follows
exactly the path it would follow alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nabla_jax.functional.context import Context, kl_rows, lm_loglik, rm_reward
from nabla_jax.functional.dto_config import DTOHyper, DTOProgram
from nabla_jax.functional.packing import PaddedProblems
from nabla_jax.functional.ste import st_softmax, ste_argmax

__all__ = [
    "DTOState",
    "RefineTrace",
    "dto_step",
    "init_state",
    "model_loss_rows",
    "relax_window",
    "uses_rm",
    "window_logits",
]


class RefineTrace(NamedTuple):
    """Per-step record; each field is ``[B]`` per step (``[S, B]`` after the scan).

    loss: value back-propagated (full loss, or the cached-gradient surrogate ⟨g, y⟩ + KL term).
    reward, loglik: of the latest full step. kl: KL term of the window logits vs the reference.
    lr: the scheduled learning rate of the step (NaN for an optimizer that does not expose one).
    full_step: the models ran for this row. tokens_changed: positions whose argmax changed.
    kl_collapse: kl above the threshold. nonfinite: the loss was not finite.
    """

    loss: jax.Array
    reward: jax.Array
    loglik: jax.Array
    kl: jax.Array
    lr: jax.Array
    full_step: jax.Array
    tokens_changed: jax.Array
    kl_collapse: jax.Array
    nonfinite: jax.Array


class DTOState(NamedTuple):
    """The refinement's state between steps (a pytree); ``[B, ...]`` per row.

    Attributes:
      params: ``[B, K, V]`` window logits (or ``[B, K, D]`` latents), in ``cfg.window_dtype``.
      opt_state: the optimizer's state (kept in the window's dtype, as torch's Adam on it).
      g_cache: ``[B, K, V]`` float32 ``∂loss/∂y`` of the row's last full step.
      cache_valid: ``[B]`` bool: no argmax changed since that step.
      tokens: ``[B, K]`` int32 argmax of the current window logits.
      reward, loglik: ``[B]`` float32 of the last full step.
      halted: ``[B]`` bool: stopped on a non-finite loss (the row no longer moves).
      full_steps: ``[B]`` int32 steps in which this row's models ran.
      batch_full_steps: ``[]`` int32 steps in which the models ran at all.
    """

    params: jax.Array
    opt_state: Any
    g_cache: jax.Array
    cache_valid: jax.Array
    tokens: jax.Array
    reward: jax.Array
    loglik: jax.Array
    halted: jax.Array
    full_steps: jax.Array
    batch_full_steps: jax.Array


def uses_rm(rm, cfg: DTOProgram) -> bool:
    """Whether the reward takes part in the loss (static)."""
    return rm is not None and (cfg.objective == "article" or cfg.has_reward)


def window_logits(lm, params, cfg: DTOProgram):
    """Window logits ``[B, K, V]`` float32 from the parameters (logits, or latents via the head)."""
    z = params if cfg.mode == "logits" else lm.head_logits(params)
    return z.astype(jnp.float32)


def relax_window(z, keys, step, cfg: DTOProgram, h: DTOHyper):
    """Straight-through relaxation of ``z [B, K, V]``; Gumbel keys folded with the step."""
    if cfg.objective == "article":
        return ste_argmax(z)
    if cfg.has_gumbel:  # static: the program keeps only whether noise is drawn
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        return jax.vmap(lambda zz, kk: st_softmax(zz, h.tau, cfg.hard, kk, h.gumbel_scale))(
            z, step_keys
        )
    return st_softmax(z, h.tau, cfg.hard)


def model_loss_rows(lm, rm, ctx: Context, batch, y, cfg: DTOProgram, h: DTOHyper):
    """The models' part of the loss per row: ``(loss [B], loglik [B], reward [B])``."""
    b = y.shape[0]
    reward = rm_reward(rm, ctx, batch, y, cfg) if uses_rm(rm, cfg) else jnp.zeros(b)
    if cfg.objective == "paper":
        loglik = lm_loglik(lm, ctx, batch, y, cfg, h.nll_coeff)
        return -(loglik + h.reward_coeff * reward), loglik, reward
    return -reward, jnp.zeros(b), reward


def init_state(lm, batch: PaddedProblems, cfg: DTOProgram, optimizer) -> DTOState:
    """The state before step 0: the windows' initial parameters and a fresh optimizer state.

    Args:
      lm: the policy (its head turns latents into logits in latents mode).
      batch: ``B`` rows (``batch.init [B, K, V | D]``).
      cfg: the structure (``mode``, ``window_dtype``).
      optimizer: an ``optax.GradientTransformation`` (e.g. ``paper_optimizer(cfg, hyper)``).
    """
    params = batch.init.astype(cfg.window_dtype)
    b, k = params.shape[:2]
    v = batch.ref_logits.shape[-1]
    zeros = jnp.zeros(b, jnp.float32)
    return DTOState(
        params=params,
        opt_state=optimizer.init(params),
        g_cache=jnp.zeros((b, k, v), jnp.float32),
        cache_valid=jnp.zeros(b, bool),
        tokens=jnp.argmax(window_logits(lm, params, cfg), axis=-1),
        reward=zeros,
        loglik=zeros,
        halted=jnp.zeros(b, bool),
        full_steps=jnp.zeros(b, jnp.int32),
        batch_full_steps=jnp.zeros((), jnp.int32),
    )


def _step_learning_rate(cfg, h, optimizer_is_paper, opt_state, step_index):
    if optimizer_is_paper:
        return cfg.learning_rate_at(step_index, h)
    lr = optax.tree_utils.tree_get(opt_state, "learning_rate", None)
    return jnp.asarray(jnp.nan if lr is None else lr, jnp.float32)


def dto_step(lm, rm, *, ctx: Context, batch: PaddedProblems, state: DTOState, keys, step_index,
             cfg: DTOProgram, h: DTOHyper, optimizer, paper_lr: bool = True):  # fmt: skip
    """One optimizer step of every row (keyword arguments after the models).

    Args:
      lm, rm: the policy and the reward (nabla-jax models, ``EmbeddingLM`` / ``EmbeddingReward``).
      ctx: ``prepare_context(...)`` of this batch (computed once per refinement).
      batch: the rows.
      state: the state after the previous step.
      keys: ``[B]`` PRNG keys (Gumbel noise only).
      step_index: the step number (int32 scalar; folds into the Gumbel keys).
      cfg, h: the structure and the run-time numbers.
      optimizer: the ``optax.GradientTransformation`` that ``state.opt_state`` belongs to.
      paper_lr: record ``cfg``'s scheduled learning rate in the trace (the default optimizer);
        False reads an injected ``learning_rate`` from the optimizer's state (NaN if none).

    Returns:
      ``(new DTOState, RefineTrace of this step with [B] fields)``.
    """
    win = batch.window_mask
    pos_mask = win if cfg.update_postfix else win * (jnp.arange(win.shape[1]) == 0)
    grad_mask = pos_mask[..., None].astype(state.params.dtype)
    valid_rows = batch.row_valid
    kl_apply = cfg.objective == "article"

    def model_terms(y):
        loss, loglik, reward = model_loss_rows(lm, rm, ctx, batch, y, cfg, h)
        return jnp.sum(loss * valid_rows), (loglik, reward, loss)

    y = relax_window(window_logits(lm, state.params, cfg), keys, step_index, cfg, h)
    need_full = ~(cfg.grad_caching & state.cache_valid)
    run_models = jnp.any(need_full & (valid_rows > 0))

    def full(_):
        (_, (loglik, reward, loss)), gy = jax.value_and_grad(model_terms, has_aux=True)(y)
        return gy, loglik, reward, loss

    def cached(_):
        b = y.shape[0]
        return state.g_cache, jnp.zeros(b), jnp.zeros(b), jnp.zeros(b)

    gy_full, loglik_f, reward_f, loss_f = jax.lax.cond(run_models, full, cached, None)
    rowsel = need_full[:, None, None]
    gy = jnp.where(rowsel, gy_full, state.g_cache)
    loglik = jnp.where(need_full, loglik_f, state.loglik)
    reward = jnp.where(need_full, reward_f, state.reward)
    surrogate_loss = jnp.sum(gy * y, axis=(1, 2))

    def param_objective(params):
        yy = relax_window(window_logits(lm, params, cfg), keys, step_index, cfg, h)
        lin = jnp.sum(jax.lax.stop_gradient(gy) * yy)
        if cfg.objective != "article" and not cfg.has_kl:
            kl = jnp.zeros(params.shape[0])
        else:
            kl = kl_rows(window_logits(lm, params, cfg), batch.ref_logits, win, cfg.kl_direction)
        total = lin + (h.lambda_kl * jnp.sum(kl * valid_rows) if kl_apply else 0.0)
        return total, kl

    (_, kl), grads = jax.value_and_grad(param_objective, has_aux=True)(state.params)
    kl_loss = h.lambda_kl * kl if kl_apply else jnp.zeros_like(kl)
    loss = jnp.where(need_full, loss_f, surrogate_loss) + kl_loss
    grads = grads * grad_mask
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    # The optimizer's state keeps the window's dtype (bfloat16 windows: as torch's Adam on a
    # bfloat16 parameter); run-time float32 hyperparameters would otherwise promote it.
    opt_state = jax.tree.map(lambda a, b: a.astype(b.dtype), opt_state, state.opt_state)
    new_params = optax.apply_updates(state.params, updates).astype(state.params.dtype)
    nonfinite = ~jnp.isfinite(loss) | state.halted
    new_params = jnp.where(nonfinite[:, None, None], state.params, new_params)
    tokens = jnp.argmax(window_logits(lm, new_params, cfg), axis=-1)
    changed = jnp.sum((tokens != state.tokens) & (win > 0), axis=-1)
    if cfg.grad_caching:
        g_cache = jnp.where(rowsel, gy_full, state.g_cache).astype(jnp.float32)
        cache_valid = (state.cache_valid | need_full) & (changed == 0)
    else:
        g_cache, cache_valid = state.g_cache, state.cache_valid
    new_state = DTOState(
        new_params, opt_state, g_cache, cache_valid, tokens, reward, loglik, nonfinite,
        state.full_steps + need_full.astype(jnp.int32),
        state.batch_full_steps + run_models.astype(jnp.int32),
    )  # fmt: skip
    lr = _step_learning_rate(cfg, h, paper_lr, opt_state, step_index)
    record = RefineTrace(
        loss=loss,
        reward=reward,
        loglik=loglik,
        kl=kl,
        lr=jnp.broadcast_to(lr, loss.shape),
        full_step=need_full,
        tokens_changed=changed,
        kl_collapse=kl > h.kl_warn_threshold,
        nonfinite=~jnp.isfinite(loss),
    )
    return new_state, record
