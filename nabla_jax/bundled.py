"""The bundled default: the shipped LM / RM and the settings tuned for the arithmetic task."""

from __future__ import annotations

from pathlib import Path

from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.dto_config import DTOConfig

__all__ = [
    "ASSETS",
    "BUNDLED_LM",
    "BUNDLED_RM",
    "bundled_baseline_sampling",
    "bundled_decode_config",
    "load_bundled",
]

ASSETS = Path(__file__).parent / "assets"
BUNDLED_LM = ASSETS / "lm"
BUNDLED_RM = ASSETS / "rm"


def bundled_decode_config(**overrides) -> DecodeConfig:
    """∇-Reasoner settings for the bundled arithmetic task (``configs/arithmetic.yaml``).

    Responses are short (≤ 96 tokens). The paper's MATH-500 settings with five changes, all
    chosen on validation-split problems (never the test split):

    * rollouts (the first answer and each regeneration after a resampled token) are greedy: the
      tiny LM's τ 0.6 samples are worse than its greedy answer; on 40 validation problems
      greedy rollouts gave 62.5% against 57.5% with τ 0.6 (greedy decoding alone: 55%);
    * positions are selected at top-1 probability ≤ 0.99 (paper 0.97): 53.75% against 52.5%
      on 80 validation problems (greedy decoding 47.5%), a few more model calls;
    * the gradient-norm probe is off: its threshold (4) was set for 7B models, and on 32
      validation problems the probe-free selection was more accurate at fewer model calls;
    * the resample leaves out the current token (``resample_excludes_current``), so every
      selected position proposes: the tiny LM's mistakes are confident, and resampling them
      mostly drew the same token (1.4 generations of 8 per problem);
    * a proposal is accepted only when the RM scores it 4 above the current response
      (``accept_margin``): the bundled RM orders two responses correctly 75% of the time, and
      without a margin the extra tests broke more answers than they fixed. On 80 validation
      problems the two together gave 60.0% (greedy 53.8%, the paper's loop 47.5%); on 400 test
      problems 58.5% against greedy's 53.2% (21 answers fixed, none broken).

    The sampled baselines use :func:`bundled_baseline_sampling` instead of ``rollout``.
    """
    base = dict(
        max_length=96,
        max_n_generations=8,
        rollout=SamplingConfig(temperature=0.0),
        resample=SamplingConfig(temperature=0.5, top_p=0.95),
        confidence_threshold=0.99,
        grad_threshold=None,
        dto=DTOConfig(num_steps=20, learning_rate=0.01),
        dto_window=32,
        batch_size=8,
        resample_excludes_current=True,
        accept_margin=4.0,
    )
    base.update(overrides)
    return DecodeConfig(**base)


def bundled_baseline_sampling() -> SamplingConfig:
    """Sampling of the sampled baselines (CoT, Best-of-N, self-consistency) on the bundled task:
    the paper's rollout setting (temperature 0.6, top-p 0.95)."""
    return SamplingConfig(temperature=0.6, top_p=0.95)


def load_bundled(dtype: str = "float32"):
    """(lm, rm) of the bundled pair."""
    from nabla_jax.models import load_causal_lm, load_reward_model

    for p in (BUNDLED_LM, BUNDLED_RM):
        if not (p / "config.json").exists():
            raise FileNotFoundError(
                f"the bundled model {p} is missing; reinstall nabla-jax or pass --lm/--rm"
            )
    return load_causal_lm(BUNDLED_LM, dtype), load_reward_model(BUNDLED_RM, dtype)
