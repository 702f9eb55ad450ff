"""nabla-jax: ∇-Reasoner in JAX — test-time reasoning by gradient descent on text.

The names below are the public API (``__all__``): models and their loading, the straight-through
estimators and loss terms, DTO refinement (``refine`` / ``refine_batch``), the ∇-Reasoner decoder
and the baselines, vocabulary and template helpers, and device meshes. The package is laid out by
layer, each importing only those below it (docs/architecture.md):

* ``app`` — the command line, run configs, the demo, the bundled default, benchmarks' evaluation;
* ``decoding`` — the ∇-Reasoner decoder, its steps, the baselines;
* ``tasks`` — task definitions, graders and oracles;
* ``functional`` — DTO: its config, straight-through estimators, objectives, the refinement core;
* ``models`` — Flax ports of Hugging Face checkpoints, loading and parameter layouts;
* ``runtime`` — meshes, buckets, profiling, the compilation cache, multi-host start-up;
* ``text`` — chat templates, vocabularies, the bundled tokenizer.

Importing the package changes nothing outside it: the persistent compilation cache is turned on
by the command line, ``NablaDecoder`` and the benchmarks (``nj.compilation_cache``), not here.
"""

from nabla_jax import moved

moved.install()  # old module paths (nabla_jax.refine, ...) keep working for one release

from nabla_jax import (
    decoding,
    functional,  # the refinement core as pure functions (make_refine, pack, refine_rows, ...)
    models,
    sharding,  # meshes (runtime.sharding) and parameter layouts (models.partition)
    tasks,
)
from nabla_jax.app import revisions  # revision_events, print_revisions (rich imported on use)
from nabla_jax.decoding import DecodeConfig, DecodeResult, NablaDecoder
from nabla_jax.decoding.baselines import (
    best_of_n,
    greedy_cot,
    majority_vote,
    sampled_cot,
    self_consistency,
)
from nabla_jax.decoding.beam import beam_search
from nabla_jax.decoding.mcts_search import mcts
from nabla_jax.decoding.sampling import SamplingConfig, filter_logits, sample_token
from nabla_jax.decoding.weighted import weighted_best_of_n
from nabla_jax.functional.article import optimize_reasoning_sequence
from nabla_jax.functional.dto_config import DTOConfig
from nabla_jax.functional.objectives import (
    LossTerms,
    article_loss,
    article_reward,
    kl_divergence,
    kl_ref_theta,
    kl_theta_ref,
    paper_loglik,
    paper_loss,
)
from nabla_jax.functional.refine import (
    RefineProblem,
    RefineResult,
    RefineTrace,
    refine,
    refine_batch,
    window_grad_norms,
)
from nabla_jax.functional.ste import st_softmax, st_softmax_embed, ste_argmax, ste_argmax_embed
from nabla_jax.functional.step_reward import StepReward, step_reward
from nabla_jax.models import (
    CausalLM,
    CheckpointMismatchError,
    KVCache,
    ModelConfig,
    ProcessRewardModel,
    RewardModel,
    UnsupportedModelError,
    init_causal_lm,
    init_reward_model,
    load_causal_lm,
    load_process_reward_model,
    load_reward_model,
)
from nabla_jax.runtime import compilation_cache, profiling
from nabla_jax.runtime.sharding import make_mesh
from nabla_jax.text import vocab
from nabla_jax.text.templates import ChatTemplateError, lm_prompt_ids, rm_prefix_suffix_ids
from nabla_jax.text.vocab import (
    OutOfVocabularyError,
    TokenizationMismatchError,
    VocabMismatchError,
    VocabSizeMismatchError,
    align_rm_embeddings,
    check_vocab_compatibility,
)

__version__ = "0.1.0"

__all__ = [
    # Models: loading, building, and what they return.
    "CausalLM",
    "CheckpointMismatchError",
    "KVCache",
    "ModelConfig",
    "ProcessRewardModel",
    "RewardModel",
    "StepReward",
    "UnsupportedModelError",
    "init_causal_lm",
    "init_reward_model",
    "load_causal_lm",
    "load_process_reward_model",
    "load_reward_model",
    "step_reward",
    # Vocabularies and chat templates of an LM / RM pair.
    "ChatTemplateError",
    "OutOfVocabularyError",
    "TokenizationMismatchError",
    "VocabMismatchError",
    "VocabSizeMismatchError",
    "align_rm_embeddings",
    "check_vocab_compatibility",
    "lm_prompt_ids",
    "rm_prefix_suffix_ids",
    # Straight-through estimators and loss terms.
    "LossTerms",
    "article_loss",
    "article_reward",
    "kl_divergence",
    "kl_ref_theta",
    "kl_theta_ref",
    "paper_loglik",
    "paper_loss",
    "st_softmax",
    "st_softmax_embed",
    "ste_argmax",
    "ste_argmax_embed",
    # DTO refinement.
    "DTOConfig",
    "RefineProblem",
    "RefineResult",
    "RefineTrace",
    "optimize_reasoning_sequence",
    "refine",
    "refine_batch",
    "window_grad_norms",
    # Decoding: sampling, the ∇-Reasoner decoder, baselines, tree searches.
    "DecodeConfig",
    "DecodeResult",
    "NablaDecoder",
    "SamplingConfig",
    "beam_search",
    "best_of_n",
    "filter_logits",
    "greedy_cot",
    "majority_vote",
    "mcts",
    "sample_token",
    "sampled_cot",
    "self_consistency",
    "weighted_best_of_n",
    # Devices.
    "make_mesh",
    # Modules and subpackages.
    "compilation_cache",
    "decoding",
    "functional",
    "models",
    "profiling",
    "revisions",
    "sharding",
    "tasks",
    "vocab",
]
