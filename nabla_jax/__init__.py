"""nabla-jax: ∇-Reasoner in JAX — test-time reasoning by gradient descent on text."""

from nabla_jax import compilation_cache, models, profiling, sharding
from nabla_jax.decoding.sampling import SamplingConfig, filter_logits, sample_token
from nabla_jax.models import (
    CausalLM,
    CheckpointMismatchError,
    KVCache,
    ModelConfig,
    RewardModel,
    UnsupportedModelError,
    init_causal_lm,
    init_reward_model,
    load_causal_lm,
    load_reward_model,
)
from nabla_jax.objectives import (
    LossTerms,
    article_loss,
    article_reward,
    kl_divergence,
    kl_ref_theta,
    kl_theta_ref,
    paper_loglik,
    paper_loss,
)
from nabla_jax.ste import st_softmax, st_softmax_embed, ste_argmax, ste_argmax_embed
from nabla_jax.templates import ChatTemplateError, lm_prompt_ids, rm_prefix_suffix_ids
from nabla_jax.vocab import (
    OutOfVocabularyError,
    TokenizationMismatchError,
    VocabMismatchError,
    VocabSizeMismatchError,
    align_rm_embeddings,
    check_vocab_compatibility,
)

__version__ = "0.1.0"
from nabla_jax import revisions  # revision_events, print_revisions (rich imported on use)
from nabla_jax.article import optimize_reasoning_sequence
from nabla_jax.decoding import DecodeConfig, DecodeResult, NablaDecoder
from nabla_jax.decoding.baselines import (
    best_of_n,
    greedy_cot,
    majority_vote,
    sampled_cot,
    self_consistency,
)
from nabla_jax.dto_config import DTOConfig
from nabla_jax.refine import (
    RefineProblem,
    RefineResult,
    RefineTrace,
    refine,
    refine_batch,
    window_grad_norms,
)
from nabla_jax.sharding import make_mesh

# The persistent compilation cache is on by default (see nabla_jax.compilation_cache).
compilation_cache.enable()
