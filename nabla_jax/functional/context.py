"""What the DTO's models see: the prefixes' keys/values and the loss terms of the models.

:func:`prepare_context` computes, once per refinement call, the committed prefixes' keys/values
(LM and RM) — or takes them from :class:`PrefixCaches` when the caller keeps them (the decoder
does) — and the constant embeddings of the RM suffix. :func:`lm_loglik` and :func:`rm_reward`
then run the models on the window only, every full step. An :class:`EmbeddingLM` or
:class:`EmbeddingReward` (functions of embeddings) keeps no keys/values: the prefix's embeddings
are computed once and the function runs on prefix ++ window (++ suffix) every full step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from nabla_jax.functional.dto_config import DTOProgram
from nabla_jax.functional.objectives import kl_positions, loglik_positions
from nabla_jax.functional.packing import PaddedProblems
from nabla_jax.functional.pluggable import EmbeddingLM, EmbeddingReward
from nabla_jax.functional.ste import ste_argmax_embed
from nabla_jax.functional.step_reward import StepReward
from nabla_jax.models.model import default_positions, last_valid_index
from nabla_jax.runtime.rows import take_at

__all__ = ["Context", "PrefixCaches", "kl_rows", "lm_loglik", "prepare_context", "rm_reward"]


def kl_rows(z, ref, mask, direction):
    """Per-row KL ``[B]``: masked mean over window positions of the per-position KL."""
    per = kl_positions(z, ref, direction)
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


class Context(NamedTuple):
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
    rm_table: Any  # [V_lm, D_rm] the reward's embedding rows for the window's tokens


def _open_slots(key_mask, write, new_mask):
    """``key_mask [B, S]`` with slots ``write[b] + t`` set to ``new_mask[b, t]`` (``[B, T]``)."""
    b, t = new_mask.shape
    slots = jnp.reshape(write, (-1, 1)) + jnp.arange(t)[None, :]
    rows = jnp.arange(b)[:, None]
    return key_mask.at[rows, slots].set(new_mask.astype(key_mask.dtype), mode="drop")


def prepare_context(lm, rm, batch: PaddedProblems, cfg: DTOProgram, given=None,
                    rm_table=None) -> Context:  # fmt: skip
    """Prefix keys/values once per call: computed here, or taken from ``given`` (PrefixCaches).

    ``rm_table [V_lm, D_rm]`` embeds the window's tokens for the reward (an
    :class:`EmbeddingReward` brings its own ``table``).
    """
    if isinstance(rm, EmbeddingReward):
        rm_table = rm.table
    fn_lm = isinstance(lm, EmbeddingLM)
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
        elif not fn_lm:
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
            lm_last = lm.head_logits(take_at(out.hidden, last))
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
        elif q > 0 and not isinstance(rm, EmbeddingReward):
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
    return Context(
        lm_cache, lm_write, lm_key_mask, lm_positions, lm_last, lm_prefix_embeds,
        rm_cache, rm_write, rm_key_mask, rm_positions, rm_suffix, rm_prefix_embeds, rm_index,
        rm_table,
    )  # fmt: skip


def _embed_window(y, table, hard):
    """``y @ table`` for ``y [B, K, V]``: a gather forward when y is one-hot (hard)."""
    if hard:
        return ste_argmax_embed(y, table)
    return jnp.einsum("bkv,vd->bkd", y, table)


def lm_loglik(lm, ctx: Context, batch, y, cfg, nll_coeff):
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
        first_index = last_valid_index(batch.lm_prefix_mask)
        if isinstance(lm, EmbeddingLM):
            logits = lm.fn(full, ctx.lm_key_mask)
            first = take_at(logits, first_index)[:, None]
            pred = jnp.concatenate([first, logits[:, p : p + k - 1]], axis=1)
        else:
            hidden = lm.forward(
                inputs_embeds=full, attention_mask=ctx.lm_key_mask, position_ids=positions
            ).hidden
            first = take_at(hidden, first_index)[:, None]
            pred = lm.head_logits(jnp.concatenate([first, hidden[:, p : p + k - 1]], axis=1))
    per_pos = loglik_positions(y, pred)
    return nll_coeff * jnp.sum(per_pos * batch.window_mask, axis=-1)


def rm_reward(rm, ctx: Context, batch, y, cfg):
    """Reward per row ``[B]`` of RM prefix ++ window ++ suffix, read at the last real token
    (a :class:`~nabla_jax.functional.step_reward.StepReward`: at the step ends of the window
    and the suffix, the window's from its tokens' argmax).

    ``cfg.reward_form`` decides the head of a nabla-jax model: ``"score"`` — the
    sequence-classification score (the mean over labels when there are several);
    ``"mean_last_logits"`` — the mean of a causal LM's logits there (the article's reward
    network). An :class:`EmbeddingReward` returns its function's value.
    """
    emb = _embed_window(y, ctx.rm_table, cfg.hard)
    new = jnp.concatenate([emb, ctx.rm_suffix_embeds.astype(emb.dtype)], axis=1)
    new_mask = jnp.concatenate([batch.window_mask, batch.rm_suffix_mask], axis=1)
    q = batch.rm_prefix_ids.shape[1]
    if isinstance(rm, EmbeddingReward):
        full = jnp.concatenate([ctx.rm_prefix_embeds.astype(new.dtype), new], axis=1)
        return rm.fn(full, ctx.rm_key_mask).astype(jnp.float32)
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
    if isinstance(rm, StepReward):  # the steps of the window and after it (see step_reward)
        slots = jnp.arange(new_mask.shape[1])[None, :]
        ends = jnp.concatenate(
            [rm.lm_ends(jnp.argmax(y, axis=-1)), rm.rm_ends(batch.rm_suffix_ids)], axis=1
        )
        ends = (new_mask > 0) & (ends | (slots == ctx.rm_score_index[:, None]))
        return rm.reward_of_hidden(hidden, ends, for_gradient=True)
    pooled = take_at(hidden, ctx.rm_score_index)
    if cfg.reward_form == "score":
        score = rm.score_hidden(pooled)
        return score if score.ndim == 1 else jnp.mean(score, axis=-1)
    return jnp.mean(rm.head_logits(pooled), axis=-1)  # the sketch's causal-LM reward network
