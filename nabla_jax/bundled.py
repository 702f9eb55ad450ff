"""The bundled default: the shipped LM / RM and the settings tuned for the arithmetic task."""

from __future__ import annotations

from pathlib import Path

from nabla_jax.decoding.nabla import DecodeConfig
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.dto_config import DTOConfig

ASSETS = Path(__file__).parent / "assets"
BUNDLED_LM = ASSETS / "lm"
BUNDLED_RM = ASSETS / "rm"


def bundled_decode_config(**overrides) -> DecodeConfig:
    """∇-Reasoner settings for the bundled arithmetic task (``configs/arithmetic.yaml``).

    Responses are short (≤ 96 tokens). The paper's MATH-500 settings, except the gradient-norm
    probe, which is off: its threshold (4) was set for 7B models, and on 32 validation problems
    the probe-free selection (top-1 probability ≤ 0.97) was more accurate at fewer model calls.
    """
    base = dict(
        max_length=96,
        max_n_generations=8,
        rollout=SamplingConfig(temperature=0.6, top_p=0.95),
        resample=SamplingConfig(temperature=0.5, top_p=0.95),
        confidence_threshold=0.97,
        grad_threshold=None,
        dto=DTOConfig(num_steps=20, learning_rate=0.01),
        dto_window=32,
        batch_size=8,
    )
    base.update(overrides)
    return DecodeConfig(**base)


def load_bundled(dtype: str = "float32"):
    """(lm, rm) of the bundled pair."""
    from nabla_jax.models import load_causal_lm, load_reward_model

    for p in (BUNDLED_LM, BUNDLED_RM):
        if not (p / "config.json").exists():
            raise FileNotFoundError(
                f"the bundled model {p} is missing; reinstall nabla-jax or pass --lm/--rm"
            )
    return load_causal_lm(BUNDLED_LM, dtype), load_reward_model(BUNDLED_RM, dtype)
