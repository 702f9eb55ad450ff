"""Differentiable textual optimization (DTO): the whole refinement as one jitted XLA program.

``refine`` optimizes one ahead window; ``refine_batch`` many at once. Both run the same compiled
program: every optimizer step of every prompt is one iteration of a ``lax.scan`` inside one
``jax.jit``. The committed prefix's keys/values (LM and RM) are computed once per call, before the
scan; each step runs the models on the window (and the RM suffix) only.

Batched gradient caching: ``lax.cond`` under ``vmap`` would run both branches, so the batch is not
vmapped over the models. Each row keeps its own cached gradient and validity; one un-vmapped
``lax.cond`` per step skips the models whenever *no* row needs a full step. A row whose cache is
valid uses its cached gradient even when another row forces a full step, so every row follows
exactly the path it would follow alone.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nabla_jax import sharding
from nabla_jax.dto_config import DTOConfig
from nabla_jax.models.model import CausalLM, RewardModel, default_positions, last_valid_index
from nabla_jax.refine_batching import PaddedProblems, pad_problems, plan_chunks
from nabla_jax.ste import st_softmax, ste_argmax, ste_argmax_embed


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


class _Context(NamedTuple):
    """What every step needs, computed once per call (prefix KV caches, constant embeddings)."""

    lm_cache: Any
    lm_key_mask: Any
    lm_positions: Any
    lm_prefix_last: Any  # [B, V] logits predicting window position 0
    lm_prefix_embeds: Any  # only without prefix caching
    rm_cache: Any
    rm_key_mask: Any
    rm_positions: Any
    rm_suffix_embeds: Any
    rm_prefix_embeds: Any
    rm_score_index: Any


def _prepare_context(lm, rm, batch: PaddedProblems, cfg: DTOConfig) -> _Context:
    b, p = batch.lm_prefix_ids.shape
    k = batch.window_mask.shape[1]
    win = batch.window_mask
    lm_cache = lm_key_mask = lm_positions = lm_last = lm_prefix_embeds = None
    if cfg.objective == "paper":
        n_prefix = jnp.sum(batch.lm_prefix_mask, axis=-1, keepdims=True)
        lm_positions = n_prefix + jnp.maximum(jnp.cumsum(win, axis=-1) - 1, 0)
        lm_key_mask = jnp.concatenate([batch.lm_prefix_mask, win], axis=1)
        if cfg.prefix_cache:
            out = lm.forward(
                batch.lm_prefix_ids,
                batch.lm_prefix_mask,
                position_ids=default_positions(batch.lm_prefix_mask),
                cache=lm.init_cache(b, p + k),
                write_index=0,
                key_mask=jnp.concatenate([batch.lm_prefix_mask, jnp.zeros_like(win)], axis=1),
            )
            lm_cache = out.cache
            lm_last = lm.head_logits(out.hidden[:, -1])
        else:
            lm_prefix_embeds = lm.embed(batch.lm_prefix_ids)
    rm_cache = rm_key_mask = rm_positions = rm_suffix = rm_prefix_embeds = rm_index = None
    if rm is not None:
        q = batch.rm_prefix_ids.shape[1]
        s = batch.rm_suffix_ids.shape[1]
        new_mask = jnp.concatenate([win, batch.rm_suffix_mask], axis=1)
        n_prefix = jnp.sum(batch.rm_prefix_mask, axis=-1, keepdims=True)
        rm_positions = n_prefix + jnp.maximum(jnp.cumsum(new_mask, axis=-1) - 1, 0)
        rm_key_mask = jnp.concatenate([batch.rm_prefix_mask, new_mask], axis=1)
        rm_index = last_valid_index(new_mask)
        rm_suffix = rm.embed(batch.rm_suffix_ids)
        if cfg.prefix_cache and q > 0:
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
            rm_prefix_embeds = rm.embed(batch.rm_prefix_ids)
    return _Context(
        lm_cache, lm_key_mask, lm_positions, lm_last, lm_prefix_embeds,
        rm_cache, rm_key_mask, rm_positions, rm_suffix, rm_prefix_embeds, rm_index,
    )  # fmt: skip


def _embed_window(y, table, hard):
    """``y @ table`` for ``y [B, K, V]``: a gather forward when y is one-hot (hard)."""
    if hard:
        return ste_argmax_embed(y, table)
    return jnp.einsum("bkv,vd->bkd", y, table)


def _lm_loglik(lm, ctx: _Context, batch, y, cfg):
    """Paper's LM term per row ``[B]``: nll_coeff · Σ_k mask_k Σ_v y·log_softmax(pred)."""
    emb = _embed_window(y, lm.embed_matrix(), cfg.hard)
    k = y.shape[1]
    if ctx.lm_cache is not None:
        p = batch.lm_prefix_ids.shape[1]
        out = lm.forward(
            inputs_embeds=emb,
            attention_mask=batch.window_mask,
            position_ids=ctx.lm_positions,
            cache=ctx.lm_cache,
            write_index=p,
            key_mask=ctx.lm_key_mask,
        )
        win_logits = lm.head_logits(out.hidden[:, : k - 1])
        pred = jnp.concatenate([ctx.lm_prefix_last[:, None], win_logits], axis=1)
    else:
        p = batch.lm_prefix_ids.shape[1]
        full = jnp.concatenate([ctx.lm_prefix_embeds.astype(emb.dtype), emb], axis=1)
        positions = jnp.concatenate(
            [default_positions(batch.lm_prefix_mask), ctx.lm_positions], axis=1
        )
        hidden = lm.forward(
            inputs_embeds=full, attention_mask=ctx.lm_key_mask, position_ids=positions
        ).hidden
        pred = lm.head_logits(hidden[:, p - 1 : p + k - 1])
    per_pos = jnp.sum(y * jax.nn.log_softmax(pred, axis=-1), axis=-1)
    return cfg.nll_coeff * jnp.sum(per_pos * batch.window_mask, axis=-1)


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
            write_index=q,
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
    pooled = jnp.take_along_axis(hidden, ctx.rm_score_index[:, None, None], axis=1)[:, 0]
    if isinstance(rm, RewardModel):
        score = rm.score_hidden(pooled)
        return score if score.ndim == 1 else jnp.mean(score, axis=-1)
    return jnp.mean(rm.head_logits(pooled), axis=-1)  # the sketch's causal-LM reward network


def _to_logits(lm, params, cfg):
    return params if cfg.mode == "logits" else lm.head_logits(params)


def _st(z, keys, step, cfg):
    """Straight-through relaxation of ``z [B, K, V]``; Gumbel keys folded with the step."""
    if cfg.objective == "article":
        return ste_argmax(z)
    if cfg.gumbel_scale > 0:
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        return jax.vmap(lambda zz, kk: st_softmax(zz, cfg.tau, cfg.hard, kk, cfg.gumbel_scale))(
            z, step_keys
        )
    return st_softmax(z, cfg.tau, cfg.hard)


def _uses_rm(rm, cfg: DTOConfig) -> bool:
    return rm is not None and (cfg.objective == "article" or cfg.reward_coeff != 0)


def _model_loss_rows(lm, rm, ctx: _Context, batch, y, rm_table, cfg: DTOConfig, use_rm: bool):
    """The models' part of the loss per row: ``(loss [B], loglik [B], reward [B])``."""
    b = y.shape[0]
    reward = _rm_reward(rm, ctx, batch, y, rm_table, cfg) if use_rm else jnp.zeros(b)
    if cfg.objective == "paper":
        loglik = _lm_loglik(lm, ctx, batch, y, cfg)
        loss = -(loglik + cfg.reward_coeff * reward)
    else:
        loglik = jnp.zeros(b)
        loss = -reward
    return loss, loglik, reward


class _Carry(NamedTuple):
    params: Any
    opt_state: Any
    g_cache: Any  # [B, K, V] ∂loss/∂y of the last full step
    cache_valid: Any  # [B]
    tokens: Any  # [B, K]
    reward: Any  # [B] of the last full step
    loglik: Any
    halted: Any  # [B] stopped on a non-finite loss
    full_steps: Any  # [B]
    batch_full_steps: Any  # scalar


@functools.partial(jax.jit, static_argnames=("cfg",))
def _refine_padded(lm, rm, rm_table, batch: PaddedProblems, keys, cfg: DTOConfig):
    """Refine a padded batch; returns (final params, RefineTrace [S, B], carry)."""
    ctx = _prepare_context(lm, rm, batch, cfg)
    tx = cfg.optax_transform()
    params0 = batch.init
    win = batch.window_mask
    pos_mask = win if cfg.update_postfix else win * (jnp.arange(win.shape[1]) == 0)
    grad_mask = pos_mask[..., None].astype(params0.dtype)
    use_rm = _uses_rm(rm, cfg)
    valid_rows = batch.row_valid

    def model_terms(y):
        """(Σ_b loss_b, (loglik [B], reward [B])) of the models' part of the loss."""
        loss, loglik, reward = _model_loss_rows(lm, rm, ctx, batch, y, rm_table, cfg, use_rm)
        return jnp.sum(loss * valid_rows), (loglik, reward, loss)

    def kl_term(params):
        if cfg.objective != "article" and cfg.lambda_kl == 0:
            return jnp.zeros(params.shape[0])
        return _kl_rows(_to_logits(lm, params, cfg), batch.ref_logits, win, cfg.kl_direction)

    def step(carry: _Carry, step_index):
        z = _to_logits(lm, carry.params, cfg)
        y = _st(z, keys, step_index, cfg)
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
        kl_apply = cfg.objective == "article"

        def param_objective(params):
            zz = _to_logits(lm, params, cfg)
            yy = _st(zz, keys, step_index, cfg)
            lin = jnp.sum(jax.lax.stop_gradient(gy) * yy)
            kl = kl_term(params)
            total = lin + (cfg.lambda_kl * jnp.sum(kl * valid_rows) if kl_apply else 0.0)
            return total, kl

        (_, kl), grads = jax.value_and_grad(param_objective, has_aux=True)(carry.params)
        kl_loss = cfg.lambda_kl * kl if kl_apply else jnp.zeros_like(kl)
        loss = jnp.where(need_full, loss_f, surrogate_loss) + kl_loss
        grads = grads * grad_mask
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        new_params = optax.apply_updates(carry.params, updates)
        nonfinite = ~jnp.isfinite(loss) | carry.halted
        freeze = nonfinite[:, None, None]
        new_params = jnp.where(freeze, carry.params, new_params)
        tokens = jnp.argmax(_to_logits(lm, new_params, cfg), axis=-1)
        changed = jnp.sum((tokens != carry.tokens) & (win > 0), axis=-1)
        if cfg.grad_caching:
            g_cache = jnp.where(rowsel, gy_full, carry.g_cache)
            cache_valid = (carry.cache_valid | need_full) & (changed == 0)
        else:
            g_cache, cache_valid = carry.g_cache, carry.cache_valid
        new_carry = _Carry(
            new_params, opt_state, g_cache, cache_valid, tokens, reward, loglik, nonfinite,
            carry.full_steps + need_full.astype(jnp.int32),
            carry.batch_full_steps + run_models.astype(jnp.int32),
        )  # fmt: skip
        record = RefineTrace(
            loss=loss,
            reward=reward,
            loglik=loglik,
            kl=kl,
            lr=cfg.learning_rate_at(step_index),
            full_step=need_full,
            tokens_changed=changed,
            kl_collapse=kl > cfg.kl_warn_threshold,
            nonfinite=~jnp.isfinite(loss),
        )
        return new_carry, record

    b = params0.shape[0]
    zeros_b = jnp.zeros(b, jnp.float32)
    v = batch.ref_logits.shape[-1]
    carry0 = _Carry(
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


def _rm_table(lm, rm, rm_embed):
    """The RM embedding rows indexed by LM token id ``[V_lm, D_rm]``."""
    if rm is None:
        return None
    if rm_embed is not None:
        rm_embed = jnp.asarray(rm_embed)
        if rm_embed.shape != (lm.config.vocab_size, rm.config.hidden_size):
            raise ValueError(
                f"rm_embed must be [V_lm, D_rm] = {(lm.config.vocab_size, rm.config.hidden_size)}"
                f", got {rm_embed.shape}; build it with nj.align_rm_embeddings"
            )
        return rm_embed
    if rm.config.vocab_size != lm.config.vocab_size:
        from nabla_jax.vocab import VocabSizeMismatchError

        raise VocabSizeMismatchError(
            f"LM vocabulary ({lm.config.vocab_size}) and RM vocabulary ({rm.config.vocab_size}) "
            "differ: pass rm_embed=nj.align_rm_embeddings(...) to align the RM's embeddings to "
            "the LM's tokens, or use models that share a tokenizer"
        )
    return rm.embed_matrix()


def _check_models(lm, rm, cfg: DTOConfig):
    if not isinstance(lm, CausalLM):
        raise TypeError(f"lm must be a nabla_jax CausalLM, got {type(lm).__name__}")
    if rm is None and cfg.objective == "article":
        raise ValueError("the article objective needs a reward network (rm)")
    if rm is not None and not isinstance(rm, (RewardModel, CausalLM)):
        raise TypeError(f"rm must be a RewardModel or CausalLM, got {type(rm).__name__}")
    if isinstance(rm, CausalLM) and cfg.reward_form != "mean_last_logits":
        raise ValueError(
            "a causal-LM reward network needs reward_form='mean_last_logits' (the article's "
            "reward); a sequence-classification RM uses reward_form='score'"
        )
    if cfg.objective == "article" and cfg.num_steps > cfg.ste_warn_steps:
        warnings.warn(
            f"{cfg.num_steps} straight-through steps: the article bounds useful STE refinement at "
            f"{cfg.ste_warn_steps}; beyond it the estimator's error tends to dominate the reward "
            "signal",
            stacklevel=3,
        )


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
    _check_models(lm, rm, cfg)
    if mesh is not None:
        sharding.check_batch_divisible(batch_size, mesh)
        lm, rm, _ = sharding.shard_refine_models(lm, rm, None, mesh)
    table = _rm_table(lm, rm, rm_embed)
    if mesh is not None:
        _, _, table = sharding.shard_refine_models(None, None, table, mesh)
    results: list[RefineResult | None] = [None] * len(problems)
    for rows in plan_chunks(problems, batch_size):
        batch = pad_problems(lm, [problems[i] for i in rows], cfg, batch_size)
        keys = _chunk_keys(key, problem_keys, rows, batch_size, len(problems))
        if mesh is not None:
            batch, keys = sharding.shard_batch((batch, keys), mesh)
        logits, final, trace = _refine_padded(lm, rm, table, batch, keys, _program_key(cfg))
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


def _program_key(cfg: DTOConfig) -> DTOConfig:
    """``cfg`` with its host-only fields at their defaults, so they never cause a recompile."""
    return dataclasses.replace(cfg, on_nonfinite="raise", ste_warn_steps=8)


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


@functools.partial(jax.jit, static_argnames=("cfg",))
def _grad_norms_padded(lm, rm, rm_table, batch: PaddedProblems, keys, cfg: DTOConfig):
    """``‖∂loss/∂y_k‖₂`` per window position ``[B, K]`` (0 on padding) at the initial window."""
    ctx = _prepare_context(lm, rm, batch, cfg)
    y = _st(_to_logits(lm, batch.init, cfg), keys, 0, cfg)
    use_rm = _uses_rm(rm, cfg)

    def total(yy):
        loss, _, _ = _model_loss_rows(lm, rm, ctx, batch, yy, rm_table, cfg, use_rm)
        return jnp.sum(loss * batch.row_valid)

    gy = jax.grad(total)(y)
    return jnp.linalg.norm(gy, axis=-1) * batch.window_mask


def window_grad_norms(
    lm: CausalLM,
    rm,
    problems: list[RefineProblem],
    cfg: DTOConfig,
    key=None,
    *,
    batch_size: int = 8,
    rm_embed=None,
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
      problem_keys: optional per-problem keys, used instead of ``key``.
    Returns:
      one ``[K]`` float32 numpy array per problem, in input order.
    """
    if not problems:
        raise ValueError("window_grad_norms needs at least one RefineProblem")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    _check_models(lm, rm, cfg)
    table = _rm_table(lm, rm, rm_embed)
    key = jax.random.key(0) if key is None else key
    out: list[np.ndarray | None] = [None] * len(problems)
    for rows in plan_chunks(problems, batch_size):
        batch = pad_problems(lm, [problems[i] for i in rows], cfg, batch_size)
        keys = _chunk_keys(key, problem_keys, rows, batch_size, len(problems))
        norms = np.asarray(_grad_norms_padded(lm, rm, table, batch, keys, cfg))
        for j, i in enumerate(rows):
            out[i] = norms[j, : np.asarray(problems[i].init).shape[0]]
    return out


def refine(lm: CausalLM, rm, problem: RefineProblem, cfg: DTOConfig, key, *, rm_embed=None):
    """Refine one ahead window; see ``refine_batch`` (this is a batch of one)."""
    return refine_batch(lm, rm, [problem], cfg, key, batch_size=1, rm_embed=rm_embed)[0]


def compiled_programs() -> int:
    """How many refinement programs have been compiled in this process (for tests)."""
    return _refine_padded._cache_size()
