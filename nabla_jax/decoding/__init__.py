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

from nabla_jax.decoding.generate import (  # noqa: E402
    PaddedRollout,
    RolloutResult,
    generate_padded,
    pad_prompts,
    rollout,
)
from nabla_jax.runtime.buckets import bucket_length  # noqa: E402

__all__ += [
    "PaddedRollout",
    "RolloutResult",
    "bucket_length",
    "generate_padded",
    "pad_prompts",
    "rollout",
]

from nabla_jax.decoding.config import DecodeConfig  # noqa: E402
from nabla_jax.decoding.nabla import NablaDecoder  # noqa: E402
from nabla_jax.decoding.results import DecodeResult  # noqa: E402

__all__ += ["DecodeConfig", "DecodeResult", "NablaDecoder"]

from nabla_jax.decoding import baselines  # noqa: E402
from nabla_jax.decoding.baselines import (  # noqa: E402
    best_of_n,
    greedy_cot,
    majority_vote,
    sampled_cot,
    self_consistency,
)
from nabla_jax.decoding.beam import beam_search  # noqa: E402
from nabla_jax.decoding.mcts_search import mcts  # noqa: E402
from nabla_jax.decoding.registry import (  # noqa: E402
    BASELINES,
    METHODS,
    NABLA_VARIANTS,
    Baseline,
    method_runner,
    parse_method,
    parse_methods,
    run_baseline,
)
from nabla_jax.decoding.search_options import BeamOptions, MCTSOptions, SearchOptions  # noqa: E402,E501
from nabla_jax.decoding.weighted import weighted_best_of_n, weighted_vote  # noqa: E402

__all__ += [
    "BASELINES",
    "METHODS",
    "BeamOptions",
    "MCTSOptions",
    "SearchOptions",
    "NABLA_VARIANTS",
    "Baseline",
    "method_runner",
    "parse_methods",
    "baselines",
    "beam_search",
    "best_of_n",
    "greedy_cot",
    "majority_vote",
    "mcts",
    "parse_method",
    "run_baseline",
    "sampled_cot",
    "self_consistency",
    "weighted_best_of_n",
    "weighted_vote",
]


#: The parts of the old ``nabla_jax.decoding.rollout`` module (its name is the host function's).
_ROLLOUT_PARTS = ("buffers", "continuation", "sampling")


def __getattr__(name):
    if name == "rollout_module":  # deprecated: the old decoding.rollout module, split in three
        import importlib
        import types
        import warnings

        parts = [f"nabla_jax.decoding.{p}" for p in _ROLLOUT_PARTS]
        warnings.warn(
            f"nabla_jax.decoding.rollout_module is deprecated: its names now live in "
            f"{', '.join(parts)}",
            DeprecationWarning,
            stacklevel=2,
        )
        module = types.ModuleType("nabla_jax.decoding.rollout_module")
        for part in parts:
            mod = importlib.import_module(part)
            for n in mod.__all__:
                setattr(module, n, getattr(mod, n))
        return module
    raise AttributeError(f"module 'nabla_jax.decoding' has no attribute {name!r}")
