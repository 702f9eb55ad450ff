"""The bundled default: the shipped LM / RM and the settings tuned for the arithmetic task.

The settings live in one file, ``nabla_jax/assets/arithmetic.yaml`` (shipped with the package;
``configs/arithmetic.yaml`` in the repository links to it), with the reason for every choice in
its comments. In short — the paper's MATH-500 settings with five changes, each chosen on
validation-split problems: greedy rollouts, selection at top-1 probability ≤ 0.99, no
gradient-norm probe, a resample that leaves out the current token, and acceptance only by a
margin of 4 RM logits.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.sampling import SamplingConfig

__all__ = [
    "ASSETS",
    "BUNDLED_CONFIG",
    "BUNDLED_LM",
    "BUNDLED_RM",
    "bundled_baseline_sampling",
    "bundled_decode_config",
    "load_bundled",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_LM = ASSETS / "lm"
BUNDLED_RM = ASSETS / "rm"
BUNDLED_CONFIG = ASSETS / "arithmetic.yaml"


@functools.lru_cache(maxsize=1)
def _bundled_run_config() -> dict:
    from nabla_jax.app.config_io import load_run_config

    return load_run_config(BUNDLED_CONFIG)


def bundled_decode_config(**overrides) -> DecodeConfig:
    """∇-Reasoner settings for the bundled arithmetic task (the ``decode:`` section of
    ``nabla_jax/assets/arithmetic.yaml``), with ``overrides`` (``DecodeConfig`` fields)
    replacing fields. The sampled baselines use :func:`bundled_baseline_sampling`."""
    return dataclasses.replace(_bundled_run_config()["decode"], **overrides)


def bundled_baseline_sampling() -> SamplingConfig:
    """Sampling of the sampled baselines (CoT, Best-of-N, self-consistency) on the bundled task
    (the file's ``baselines:``): the paper's rollout setting, temperature 0.6, top-p 0.95."""
    return _bundled_run_config()["baselines"]


def load_bundled(dtype: str = "float32"):
    """(lm, rm) of the bundled pair."""
    from nabla_jax.models import load_causal_lm, load_reward_model

    for p in (BUNDLED_LM, BUNDLED_RM):
        if not (p / "config.json").exists():
            raise FileNotFoundError(
                f"the bundled model {p} is missing; reinstall nabla-jax or pass --lm/--rm"
            )
    return load_causal_lm(BUNDLED_LM, dtype), load_reward_model(BUNDLED_RM, dtype)
