"""Host-side checks of a refinement's pieces, run once before anything is traced or computed."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

from nabla_jax.functional.dto_config import DTOConfig
from nabla_jax.functional.pluggable import EmbeddingLM, EmbeddingReward, lm_sizes
from nabla_jax.models.model import CausalLM, RewardModel

__all__ = ["check_finite_input", "check_models", "check_rm_ids", "rm_embedding_table"]


def check_finite_input(x, name: str) -> None:
    """A caller's array holding NaN or ±inf is named as the caller's input (a non-finite start
    would otherwise surface later as a non-finite loss, blamed on the learning rate)."""
    a = np.asarray(x, np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN/inf value(s) (first {a[where]} at index {where}): "
            "this is your input, not a training problem — pass finite values"
        )


def check_models(lm, rm, cfg: DTOConfig, *, stacklevel: int = 3) -> None:
    """The policy, the reward and the config fit together (types, objective, reward form).

    Raises:
      TypeError: a model or config of the wrong type (the message names what to pass).
      ValueError: pieces that do not fit together (the message names what to change).
    """
    if not isinstance(cfg, DTOConfig):
        raise TypeError(
            f"cfg must be a nabla_jax DTOConfig, got {type(cfg).__name__}; e.g. "
            "nj.DTOConfig(learning_rate=0.05)"
        )
    if not isinstance(lm, (CausalLM, EmbeddingLM)):
        raise TypeError(
            f"lm must be a nabla_jax CausalLM or an nj.functional.EmbeddingLM, got "
            f"{type(lm).__name__}"
        )
    if isinstance(lm, EmbeddingLM) and cfg.mode != "logits":
        raise ValueError("an EmbeddingLM has no output head: use DTOConfig(mode='logits')")
    if rm is None and cfg.objective == "article":
        raise ValueError("the article objective needs a reward network (rm)")
    if rm is None and cfg.reward_coeff != 0:
        raise ValueError(
            f"rm is None but reward_coeff={cfg.reward_coeff}: the reward term needs a reward "
            "model; pass one, or set DTOConfig(reward_coeff=0.0) to refine on the LM term alone"
        )
    if rm is not None and not isinstance(rm, (RewardModel, CausalLM, EmbeddingReward)):
        raise TypeError(
            f"rm must be a RewardModel, a CausalLM or an nj.functional.EmbeddingReward, got "
            f"{type(rm).__name__}"
        )
    if isinstance(rm, CausalLM) and cfg.reward_form != "mean_last_logits":
        raise ValueError(
            "a causal-LM reward network needs reward_form='mean_last_logits' (the article's "
            "reward); a sequence-classification RM uses reward_form='score'"
        )
    if isinstance(rm, RewardModel) and cfg.reward_form != "score":
        raise ValueError(
            "a sequence-classification reward model needs reward_form='score'; "
            "'mean_last_logits' is for a causal-LM reward network"
        )
    if isinstance(rm, EmbeddingReward):
        vocab = lm_sizes(lm)[0]
        if jnp.shape(rm.table)[0] != vocab:
            raise ValueError(
                f"EmbeddingReward.table has {jnp.shape(rm.table)[0]} rows but the LM's vocabulary "
                f"has {vocab}: the table is indexed by the window's (LM) token ids"
            )
    if cfg.objective == "article" and cfg.num_steps > cfg.ste_warn_steps:
        warnings.warn(
            f"{cfg.num_steps} straight-through steps: the article bounds useful STE refinement at "
            f"{cfg.ste_warn_steps}; beyond it the estimator's error tends to dominate the reward "
            "signal",
            stacklevel=stacklevel,
        )


def check_rm_ids(rm, problems) -> None:
    """RM prefix / suffix ids must index the reward's embedding table (checked before compute)."""
    if rm is None:
        return
    v = jnp.shape(rm.table)[0] if isinstance(rm, EmbeddingReward) else rm.config.vocab_size
    for i, pr in enumerate(problems):
        for name in ("rm_prefix_ids", "rm_suffix_ids"):
            ids = np.asarray(getattr(pr, name))
            if ids.size and (ids.min() < 0 or ids.max() >= v):
                bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
                raise ValueError(
                    f"problem {i}: {name} holds id {bad}, outside the reward model's vocabulary "
                    f"[0, {v}); check the RM tokenizer produced these ids"
                )


def rm_embedding_table(lm, rm, rm_embed=None):
    """The RM embedding rows indexed by LM token id ``[V_lm, D_rm]`` (None without an RM, or for
    an ``EmbeddingReward``, which carries its own table)."""
    if rm is None or isinstance(rm, EmbeddingReward):
        return None
    if rm_embed is not None:
        rm_embed = jnp.asarray(rm_embed)
        if rm_embed.shape != (lm.config.vocab_size, rm.config.hidden_size):
            raise ValueError(
                f"rm_embed must be [V_lm, D_rm] = {(lm.config.vocab_size, rm.config.hidden_size)}"
                f", got {rm_embed.shape}; build it with nj.align_rm_embeddings"
            )
        return rm_embed
    if rm.config.vocab_size != lm_sizes(lm)[0]:
        from nabla_jax.text.vocab import VocabSizeMismatchError

        raise VocabSizeMismatchError(
            f"LM vocabulary ({lm_sizes(lm)[0]}) and RM vocabulary ({rm.config.vocab_size}) "
            "differ: pass rm_embed=nj.align_rm_embeddings(...) to align the RM's embeddings to "
            "the LM's tokens, or use models that share a tokenizer"
        )
    return rm.embed_matrix()
