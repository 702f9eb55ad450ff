"""Flax model families converted from Hugging Face checkpoints.

One place per family: ``decoder/`` (Llama, Qwen2, Qwen3, Mistral) and ``gpt2.py`` each hold their
Flax module, checkpoint key table, partition rules and HF config mapping as a ``ModelFamily``
(``family.py``); ``registry.py`` lists them. Generic machinery: ``keys.py`` (key tables),
``convert.py`` / ``load.py`` (import), ``export.py`` (export), ``layers.py`` (shared blocks and
heads), ``model.py`` (the ``CausalLM`` / ``RewardModel`` / ``Backbone`` pytrees), ``prm.py``
(process reward heads on a backbone).
"""

from nabla_jax.models.config import ModelConfig, UnsupportedModelError
from nabla_jax.models.convert import CheckpointMismatchError
from nabla_jax.models.family import ModelFamily
from nabla_jax.models.layers import KVCache
from nabla_jax.models.load import load_causal_lm, load_reward_model, load_tokenizer
from nabla_jax.models.model import (
    Backbone,
    CausalLM,
    ModelOutput,
    RewardModel,
    default_positions,
    init_causal_lm,
    init_reward_model,
    last_valid_index,
)
from nabla_jax.models.prm import ProcessRewardModel, load_process_reward_model
from nabla_jax.models.registry import FAMILIES, SUPPORTED_MODEL_TYPES, config_from_hf, family_of

__all__ = [
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "Backbone",
    "CausalLM",
    "CheckpointMismatchError",
    "KVCache",
    "ModelConfig",
    "ModelFamily",
    "ModelOutput",
    "ProcessRewardModel",
    "RewardModel",
    "UnsupportedModelError",
    "config_from_hf",
    "default_positions",
    "family_of",
    "init_causal_lm",
    "init_reward_model",
    "last_valid_index",
    "load_causal_lm",
    "load_process_reward_model",
    "load_reward_model",
    "load_tokenizer",
]
