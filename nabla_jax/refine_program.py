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
from nabla_jax.models.model import RewardModel, default_positions, last_valid_index
from nabla_jax.refine_batching import PaddedProblems
from nabla_jax.ste import st_softmax, ste_argmax, ste_argmax_embed

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


def _kl_rows(z, ref, mask, direction):
    """Per-row KL ``[B]``: masked mean over window positions of the per-position KL."""
    logp = jax.nn.log_softmax(z, axis=-1)
    logr = jax.nn.log_softmax(jax.lax.stop_gradient(ref), axis=-1)
    if direction == "ref_theta":
        per = jnp.sum(jnp.exp(logr) * (logr - logp), axis=-1)
    else:
        per = jnp.sum(jnp.exp(logp) * (logp - logr), axis=-1)
    m = mask.astype(z.dtype)
    return jnp.sum(per * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)


class PrefixCaches(NamedTuple):
    """Keys/values of the committed prefixes, computed elsewhere (the decoder keeps them).

    ``lm_cache`` holds valid keys/values in the slots of ``lm_key_mask [B, S]``; the window is
    written from slot ``lm_write [B]`` on; ``lm_last [B, V]`` are the logits predicting window
    position 0. Likewise ``rm_cache`` / ``rm_key_mask`` / ``rm_write`` for the RM prefix, its
    window, tail and suffix written from ``rm_write``. The caches need room for the writes.
    """

    lm_cache: Any
    lm_key_mask: Any
    lm_write: Any
    lm_last: Any
    rm_cache: Any
    rm_key_mask: Any
    rm_write: Any


class _Context(NamedTuple):
    """What every step needs, computed once per call (prefix KV caches, constant embeddings)."""

    lm_cache: Any
    lm_write: Any  # slot of window position 0 (scalar or [B])
    lm_key_mask: Any
    lm_positions: Any
    lm_prefix_last: Any  # [B, V] logits predicting window position 0
    lm_prefix_embeds: Any  # only without prefix caching
    rm_cache: Any
    rm_write: Any
    rm_key_mask: Any
    rm_positions: Any
    rm_suffix_embeds: Any
    rm_prefix_embeds: Any
    rm_score_index: Any


def _open_slots(key_mask, write, new_mask):
    """``key_mask [B, S]`` with slots ``write[b] + t`` set to ``new_mask[b, t]`` (``[B, T]``)."""
    b, t = new_mask.shape
    slots = jnp.reshape(write, (-1, 1)) + jnp.arange(t)[None, :]
    rows = jnp.arange(b)[:, None]
    return key_mask.at[rows, slots].set(new_mask.astype(key_mask.dtype), mode="drop")


def _take_rows(x, index):
    """``x [B, T, ...]`` at ``index [B]`` → ``[B, ...]``."""
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


def _prepare_context(lm, rm, batch: PaddedProblems, cfg: DTOConfig, given=None) -> _Context:
    """Prefix keys/values once per call: computed here, or taken from ``given`` (PrefixCaches)."""
    b, p = batch.lm_prefix_ids.shape
    k = batch.window_mask.shape[1]
    win = batch.window_mask
    lm_cache = lm_key_mask = lm_positions = lm_last = lm_prefix_embeds = None
    lm_write = p
    if cfg.objective == "paper":
        n_prefix = jnp.sum(batch.lm_prefix_mask, axis=-1, keepdims=True)
        lm_positions = n_prefix + jnp.maximum(jnp.cumsum(win, axis=-1) - 1, 0)
        if given is not None:
            lm_cache, lm_write, lm_last = given.lm_cache, given.lm_write, given.lm_last
            lm_key_mask = _open_slots(given.lm_key_mask, lm_write, win)
        elif cfg.prefix_cache:
            lm_key_mask = jnp.concatenate([batch.lm_prefix_mask, win], axis=1)
            out = lm.forward(
                batch.lm_prefix_ids,
                batch.lm_prefix_mask,
                position_ids=default_positions(batch.lm_prefix_mask),
                cache=lm.init_cache(b, p + k),
                write_index=0,
                key_mask=jnp.concatenate([batch.lm_prefix_mask, jnp.zeros_like(win)], axis=1),
            )
            lm_cache = out.cache
            last = last_valid_index(batch.lm_prefix_mask)
            lm_last = lm.head_logits(_take_rows(out.hidden, last))
        else:
            lm_key_mask = jnp.concatenate([batch.lm_prefix_mask, win], axis=1)
            lm_prefix_embeds = lm.embed(batch.lm_prefix_ids)
    rm_cache = rm_key_mask = rm_positions = rm_suffix = rm_prefix_embeds = rm_index = None
    rm_write = batch.rm_prefix_ids.shape[1]
    if rm is not None:
        q = batch.rm_prefix_ids.shape[1]
        s = batch.rm_suffix_ids.shape[1]
        new_mask = jnp.concatenate([win, batch.rm_suffix_mask], axis=1)
        n_prefix = jnp.sum(batch.rm_prefix_mask, axis=-1, keepdims=True)
        rm_positions = n_prefix + jnp.maximum(jnp.cumsum(new_mask, axis=-1) - 1, 0)
        rm_index = last_valid_index(new_mask)
        rm_suffix = rm.embed(batch.rm_suffix_ids)
        if given is not None:
            rm_cache, rm_write = given.rm_cache, given.rm_write
            rm_key_mask = _open_slots(given.rm_key_mask, rm_write, new_mask)
        elif cfg.prefix_cache and q > 0:
            rm_key_mask = jnp.concatenate([batch.rm_prefix_mask, new_mask], axis=1)
            out = rm.forward(
                batch.rm_prefix_ids,
                batch.rm_prefix_mask,
                position_ids=default_positions(batch.rm_prefix_mask),
                cache=rm.init_cache(b, q + k + s),
                write_index=0,
                key_mask=jnp.concatenate([batch.rm_prefix_mask, jnp.zeros_like(new_mask)], axis=1),
            )
            rm_cache = out.cache
        else:
            rm_key_mask = jnp.concatenate([batch.rm_prefix_mask, new_mask], axis=1)
            rm_prefix_embeds = rm.embed(batch.rm_prefix_ids)
    return _Context(
        lm_cache, lm_write, lm_key_mask, lm_positions, lm_last, lm_prefix_embeds,
        rm_cache, rm_write, rm_key_mask, rm_positions, rm_suffix, rm_prefix_embeds, rm_index,
    )  # fmt: skip


def _embed_window(y, table, hard):
    """``y @ table`` for ``y [B, K, V]``: a gather forward when y is one-hot (hard)."""
    if hard:
        return ste_argmax_embed(y, table)
    return jnp.einsum("bkv,vd->bkd", y, table)


def _lm_loglik(lm, ctx: _Context, batch, y, cfg, nll_coeff):
    """Paper's LM term per row ``[B]``: nll_coeff · Σ_k mask_k Σ_v y·log_softmax(pred)."""
    emb = _embed_window(y, lm.embed_matrix(), cfg.hard)
    k = y.shape[1]
    p = batch.lm_prefix_ids.shape[1]
    if ctx.lm_cache is not None:
        out = lm.forward(
            inputs_embeds=emb,
            attention_mask=batch.window_mask,
            position_ids=ctx.lm_positions,
            cache=ctx.lm_cache,
            write_index=ctx.lm_write,
            key_mask=ctx.lm_key_mask,
        )
        win_logits = lm.head_logits(out.hidden[:, : k - 1])
        pred = jnp.concatenate([ctx.lm_prefix_last[:, None], win_logits], axis=1)
    else:
        full = jnp.concatenate([ctx.lm_prefix_embeds.astype(emb.dtype), emb], axis=1)
        positions = jnp.concatenate(
            [default_positions(batch.lm_prefix_mask), ctx.lm_positions], axis=1
        )
        hidden = lm.forward(
            inputs_embeds=full, attention_mask=ctx.lm_key_mask, position_ids=positions
        ).hidden
        first = _take_rows(hidden, last_valid_index(batch.lm_prefix_mask))[:, None]
        pred = lm.head_logits(jnp.concatenate([first, hidden[:, p : p + k - 1]], axis=1))
    per_pos = jnp.sum(y * jax.nn.log_softmax(pred, axis=-1), axis=-1)
    return nll_coeff * jnp.sum(per_pos * batch.window_mask, axis=-1)


def _rm_reward(rm, ctx: _Context, batch, y, rm_table, cfg):
    """Reward per row ``[B]`` of RM prefix ++ window ++ suffix, read at the last real token."""
    emb = _embed_window(y, rm_table, cfg.hard)
    new = jnp.concatenate([emb, ctx.rm_suffix_embeds.astype(emb.dtype)], axis=1)
    new_mask = jnp.concatenate([batch.window_mask, batch.rm_suffix_mask], axis=1)
    q = batch.rm_prefix_ids.shape[1]
    if ctx.rm_cache is not None:
        hidden = rm.forward(
            inputs_embeds=new,
            attention_mask=new_mask,
            position_ids=ctx.rm_positions,
            cache=ctx.rm_cache,
            write_index=ctx.rm_write,
            key_mask=ctx.rm_key_mask,
        ).hidden
    else:
        full = jnp.concatenate([ctx.rm_prefix_embeds.astype(new.dtype), new], axis=1)
        positions = jnp.concatenate(
            [default_positions(batch.rm_prefix_mask), ctx.rm_positions], axis=1
        )
        hidden = rm.forward(
            inputs_embeds=full, attention_mask=ctx.rm_key_mask, position_ids=positions
        ).hidden[:, q:]
    pooled = _take_rows(hidden, ctx.rm_score_index)
    if isinstance(rm, RewardModel):
        score = rm.score_hidden(pooled)
        return score if score.ndim == 1 else jnp.mean(score, axis=-1)
    return jnp.mean(rm.head_logits(pooled), axis=-1)  # the sketch's causal-LM reward network


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
    reward = _rm_reward(rm, ctx, batch, y, rm_table, cfg) if use_rm else jnp.zeros(b)
    if cfg.objective == "paper":
        loglik = _lm_loglik(lm, ctx, batch, y, cfg, h.nll_coeff)
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
    ctx = _prepare_context(lm, rm, batch, cfg, prefixes)
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
        return _kl_rows(_to_logits(lm, params, cfg), batch.ref_logits, win, cfg.kl_direction)

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
    ctx = _prepare_context(lm, rm, batch, cfg, prefixes)
    y = _st(_to_logits(lm, batch.init.astype(cfg.window_dtype), cfg), keys, 0, cfg, h)

    def total(yy):
        loss, _, _ = _model_loss_rows(lm, rm, ctx, batch, yy, rm_table, cfg, h)
        return jnp.sum(loss * batch.row_valid)

    gy = jax.grad(total)(y)
    return jnp.linalg.norm(gy, axis=-1) * batch.window_mask


refine_padded_jit = jax.jit(refine_padded, static_argnames=("cfg",))
grad_norms_padded_jit = jax.jit(grad_norms_padded, static_argnames=("cfg",))
