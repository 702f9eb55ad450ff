"""Decoding: sampling filters, rollouts, the ∇-Reasoner loop and baselines."""

from nabla_jax.decoding import sampling
from nabla_jax.decoding.sampling import (
    SamplingConfig,
    apply_temperature,
    filter_logits,
    sample_token,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "SamplingConfig",
    "apply_temperature",
    "filter_logits",
    "sample_token",
    "sampling",
    "top_k_filter",
    "top_p_filter",
]

from nabla_jax.decoding import rollout as rollout_module  # noqa: E402
from nabla_jax.decoding.rollout import (  # noqa: E402
    PaddedRollout,
    RolloutResult,
    bucket_length,
    generate_padded,
    pad_prompts,
    rollout,
)

__all__ += [
    "PaddedRollout",
    "RolloutResult",
    "bucket_length",
    "generate_padded",
    "pad_prompts",
    "rollout",
    "rollout_module",
]
