"""The tiny chat pair and decode settings shared by the decoding-mechanics tests."""

from __future__ import annotations

import nabla_jax as nj
from nabla_jax.decoding import DecodeConfig, SamplingConfig
from tests.hf_models import save_chat_pair

PROMPTS = ["What is 2 + 2?", "Solve 3x + 5 = 20.", "Let's think step by step."]

#: Short, sampled, a few DTO steps: every stage of the loop runs in seconds on random models.
TINY_DECODE = DecodeConfig(
    max_length=12,
    max_n_generations=4,
    rollout=SamplingConfig(temperature=1.0),
    resample=SamplingConfig(temperature=1.5),
    grad_threshold=None,
    dto=nj.DTOConfig(num_steps=3, learning_rate=0.05),
    dto_window=6,
    batch_size=4,
)


def load_chat_pair(tmp_path_factory):
    """``(lm, rm)``: a tiny random LM / RM pair with a ChatML tokenizer, saved and loaded back."""
    lm_dir, rm_dir = tmp_path_factory.mktemp("lm"), tmp_path_factory.mktemp("rm")
    save_chat_pair(lm_dir, rm_dir)
    return nj.load_causal_lm(lm_dir), nj.load_reward_model(rm_dir)
