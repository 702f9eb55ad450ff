"""The policy and the reward model as one pytree, and the one check that they work together.

Every entry point that decodes with a model pair — the ∇-Reasoner decoder, Best-of-N, the
baselines — checks its models here, before any compute: the types, the LM's tokenizer and chat
template, and that the RM reads the LM's tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from nabla_jax.models.model import CausalLM, RewardModel
from nabla_jax.text.templates import require_chat_template
from nabla_jax.text.vocab import shared_rm_tokenizer

__all__ = ["ModelPair", "check_policy", "check_pair"]


class ModelPair(NamedTuple):
    """The policy, the reward model, and the RM embedding rows indexed by LM token id
    (``rm_table [V_lm, D_rm]``) — the models argument of every compiled decode program."""

    lm: CausalLM
    rm: RewardModel
    rm_table: jax.Array


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


def check_pair(lm, rm, user: str):
    """:func:`check_policy`, ``rm`` a nabla-jax ``RewardModel`` that reads the LM's token ids;
    returns the tokenizer that frames responses for the RM."""
    check_policy(lm, user)
    if not isinstance(rm, RewardModel):
        raise TypeError(
            f"rm must be a nabla_jax RewardModel (load it with nj.load_reward_model), got "
            f"{type(rm).__name__}"
        )
    return shared_rm_tokenizer(lm, rm, user)
