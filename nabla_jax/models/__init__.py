"""Flax model families converted from Hugging Face checkpoints."""

from nabla_jax.models.config import ModelConfig, UnsupportedModelError
from nabla_jax.models.convert import CheckpointMismatchError
from nabla_jax.models.layers import KVCache
from nabla_jax.models.load import load_causal_lm, load_reward_model, load_tokenizer
from nabla_jax.models.model import (
    CausalLM,
    ModelOutput,
    RewardModel,
    default_positions,
    init_causal_lm,
    init_reward_model,
    last_valid_index,
)

__all__ = [
    "CausalLM",
    "CheckpointMismatchError",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "RewardModel",
    "UnsupportedModelError",
    "default_positions",
    "init_causal_lm",
    "init_reward_model",
    "last_valid_index",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
]
