"""Your own differentiable pieces as the DTO's reward or policy: functions of embeddings.

The refinement differentiates through the reward and the LM with respect to the window's relaxed
one-hot tokens ``y [B, K, V]``: it embeds ``y @ table`` and calls the model on the embeddings.
Any function of embeddings therefore works, given the embedding table it reads:

* :class:`EmbeddingReward` — ``fn(inputs_embeds [B, T, D], mask [B, T]) -> [B]`` rewards: a
  Flax / Equinox model, a value head, a rule on the embeddings, an ensemble.
* :class:`EmbeddingLM` — ``fn(inputs_embeds [B, T, D], mask [B, T]) -> logits [B, T, V]``, the
  next-token logits at every position (the LM's likelihood term).

Neither keeps keys/values across steps: the prefix is embedded and run with the window at every
full step (a nabla-jax :class:`~nabla_jax.models.CausalLM` / ``RewardModel`` computes the
prefix's keys/values once per call instead). For a callable reward, the problem's
``rm_prefix_ids`` / ``rm_suffix_ids`` index ``table`` (usually LM token ids). Positions are
``mask``'s business: the function sees left-padded prefix, window and suffix with their mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

__all__ = ["EmbeddingLM", "EmbeddingReward", "lm_sizes"]


@dataclasses.dataclass(frozen=True)
class EmbeddingReward:
    """A differentiable reward of embeddings.

    Attributes:
      fn: ``(inputs_embeds [B, T, D] float32, mask [B, T] int32) -> [B]`` reward per row
        (higher is better). Must be traceable; it is differentiated.
      table: ``[V, D]`` the embedding rows it reads, indexed by the window's token ids (the LM's
        vocabulary, so ``V`` equals the LM's vocabulary size).
    """

    fn: Callable[[Any, Any], Any]
    table: Any

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"EmbeddingReward.fn must be callable, got {type(self.fn).__name__}")
        if jnp.ndim(self.table) != 2:
            raise ValueError(
                f"EmbeddingReward.table must be [V, D], got shape {jnp.shape(self.table)}"
            )

    def embed(self, ids):
        """``ids [B, T]`` -> ``[B, T, D]`` rows of the table."""
        return jnp.asarray(self.table)[ids]


@dataclasses.dataclass(frozen=True)
class EmbeddingLM:
    """A causal LM given as a function of embeddings (the likelihood term's policy).

    Attributes:
      fn: ``(inputs_embeds [B, T, D], mask [B, T]) -> logits [B, T, V]``: position ``t``'s
        logits predict token ``t + 1`` (causal). Must be traceable; it is differentiated.
      table: ``[V, D]`` its input embeddings, indexed by token id.

    Only ``DTOConfig(mode="logits")`` applies (latents need the LM's output head).
    """

    fn: Callable[[Any, Any], Any]
    table: Any

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"EmbeddingLM.fn must be callable, got {type(self.fn).__name__}")
        if jnp.ndim(self.table) != 2:
            raise ValueError(f"EmbeddingLM.table must be [V, D], got shape {jnp.shape(self.table)}")

    def embed(self, ids):
        """``ids [B, T]`` -> ``[B, T, D]`` rows of the table."""
        return jnp.asarray(self.table)[ids]

    def embed_matrix(self):
        """``[V, D]`` the input embeddings."""
        return jnp.asarray(self.table)


def lm_sizes(lm) -> tuple[int, int, int | None]:
    """``(vocab_size, hidden_size, max_positions or None)`` of an LM or an :class:`EmbeddingLM`."""
    if isinstance(lm, EmbeddingLM):
        v, d = jnp.shape(lm.table)
        return int(v), int(d), None
    c = lm.config
    return c.vocab_size, c.hidden_size, c.max_position_embeddings
