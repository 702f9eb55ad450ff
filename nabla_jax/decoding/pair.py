"""The policy and the reward model as one pytree, and the one check that they work together.

Every entry point that decodes with a model pair — the ∇-Reasoner decoder, Best-of-N, the
baselines — checks its models here, before any compute: the types, the LM's tokenizer and chat
template, and how the RM reads the LM's tokens (``rm_vocab``):

* ``"shared"`` — the RM reads LM token ids as they are (one tokenizer, or compatible ones);
* ``"by_string"`` — the vocabularies differ in added tokens or padded rows (a Qwen2.5 policy
  with a Qwen3 reward model): an LM-id → RM-id table built once by token string maps every id
  the RM reads and selects the RM embedding rows DTO differentiates through
  (:mod:`nabla_jax.functional.vocab_map`). The default when the vocabularies differ only so.

The reward may be a :class:`~nabla_jax.functional.step_reward.StepReward` (a process reward
model read at the step ends); a separator PRM's table also sends the LM's step delimiters to
its separator.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.functional.checks import rm_embedding_table
from nabla_jax.functional.step_reward import StepReward, separator_vocabulary
from nabla_jax.functional.vocab_map import RMVocabulary, resolve_rm_vocabulary
from nabla_jax.models.model import CausalLM, RewardModel
from nabla_jax.text.templates import require_chat_template
from nabla_jax.text.vocab import shared_rm_tokenizer

__all__ = ["CheckedPair", "ModelPair", "check_pair", "check_policy", "model_pair"]


class ModelPair(NamedTuple):
    """The models argument of every compiled decode program.

    Attributes:
      lm: the policy.
      rm: the reward model.
      rm_table: ``[V_lm, D_rm]`` the RM embedding rows indexed by LM token id.
      rm_ids: ``[V_lm]`` int32 the RM id of each LM id (``rm_vocab: by_string``), or None when
        the RM reads LM ids as they are.
    """

    lm: CausalLM
    rm: RewardModel
    rm_table: jax.Array
    rm_ids: jax.Array | None = None


class CheckedPair(NamedTuple):
    """What :func:`check_pair` found: the tokenizer that frames responses for the RM, and how
    the RM reads LM ids."""

    rm_tokenizer: object
    vocabulary: RMVocabulary


def model_pair(lm, rm, vocabulary: RMVocabulary) -> ModelPair:
    """The :class:`ModelPair` of a checked pair (a ``StepReward`` bound to the LM's step-end
    tokens)."""
    if isinstance(rm, StepReward):
        rm = rm.bound_to(lm.tokenizer)
    if vocabulary.vocab_map is None:
        return ModelPair(lm, rm, rm_embedding_table(lm, rm))
    table = vocabulary.vocab_map.table
    return ModelPair(lm, rm, vocabulary.embed_table(rm.embed_matrix()),
                     jnp.asarray(table, jnp.int32))  # fmt: skip


def check_policy(lm, user: str) -> None:
    """``lm`` is a nabla-jax ``CausalLM`` with a tokenizer that has a chat template; ``user``
    names the caller in the error."""
    if not isinstance(lm, CausalLM):
        raise TypeError(f"lm must be a nabla_jax CausalLM, got {type(lm).__name__}")
    if lm.tokenizer is None:
        raise ValueError(
            "the LM has no tokenizer: load it with its tokenizer (nj.load_causal_lm(path)) — "
            f"{user} renders chat prompts and decodes responses"
        )
    require_chat_template(lm.tokenizer, "LM")


def check_pair(lm, rm, user: str, rm_vocab: str | None = None) -> CheckedPair:
    """:func:`check_policy`, ``rm`` a nabla-jax ``RewardModel``, and how it reads LM ids.

    ``rm_vocab``: ``"shared"``, ``"by_string"`` or None (shared when the vocabularies agree,
    by_string when they differ only in added tokens or padded rows; see the module doc).
    Unrelated tokenizers, or a by-string table that would feed the RM other text, are refused.
    """
    check_policy(lm, user)
    if not isinstance(rm, (RewardModel, StepReward)):
        raise TypeError(
            "rm must be a nabla_jax RewardModel (nj.load_reward_model) or a StepReward "
            f"(nj.step_reward of a process reward model), got {type(rm).__name__}"
        )
    if rm_vocab == "shared" or (
        rm_vocab is None and lm.config.vocab_size == rm.config.vocab_size
    ):  # the RM reads LM ids as they are: the tokenizers must agree
        checked = CheckedPair(shared_rm_tokenizer(lm, rm, user), RMVocabulary("shared"))
    else:
        vocabulary = resolve_rm_vocabulary(lm, rm, rm_vocab)
        if vocabulary.mode == "shared":
            checked = CheckedPair(shared_rm_tokenizer(lm, rm, user), vocabulary)
        else:
            require_chat_template(rm.tokenizer, "RM")
            checked = CheckedPair(rm.tokenizer, vocabulary)
    if isinstance(rm, StepReward):  # the LM's step delimiters reach the RM as its separator
        checked = checked._replace(vocabulary=separator_vocabulary(checked.vocabulary, lm, rm))
    return checked
