"""PyTorch twin of ``nabla_jax.functional.step_reward``, from its description: the reward
model's input of a response and its reward, the steps read one by one.

* The input: the RM template prefix ++ the response (a trailing EOS dropped); with a separator,
  every step-delimiter token of the response replaced by it and one more appended.
* The step ends: the delimiter tokens after the prefix (the separator, when there is one) and
  the input's last token.
* A step's score: the class-1 probability of a 2-label head at the step end, or an outcome
  RM's score of the prefix that ends there (its own pass over that prefix: the definition).
* The reward: the aggregate of the step scores (``torch_step_scores.aggregate``).
"""

from __future__ import annotations

import torch

from tests.reference.torch_step_scores import aggregate


def rm_input(prefix, response, *, lm_end_ids, separator=None, eos_ids=()):
    """``(ids, start)``: the RM input of ``response`` (LM ids = RM ids) and its first slot."""
    body = list(response)
    if body and body[-1] in set(eos_ids):
        body = body[:-1]
    if separator is not None:
        body = [separator if t in set(lm_end_ids) else t for t in body] + [separator]
    return list(prefix) + body, len(prefix)


def step_ends(ids, start, rm_end_ids) -> list[int]:
    """Slots of the step ends of an RM input: delimiter ids from ``start`` on, and the last."""
    ends = set(rm_end_ids)
    return [j for j in range(start, len(ids)) if ids[j] in ends or j == len(ids) - 1]


def step_scores(model, layout: str, embeds: torch.Tensor, ends: list[int]) -> torch.Tensor:
    """``[len(ends)]`` step scores of one input given as embeddings ``[T, H]``."""
    if layout == "sequence":
        return torch.stack([_orm_last(model, embeds[: e + 1]) for e in ends])
    out = model(inputs_embeds=embeds[None])
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return torch.softmax(logits[0].double(), dim=-1)[ends, 1]


def _orm_last(model, embeds: torch.Tensor) -> torch.Tensor:
    """An outcome RM's score of a whole input (its last position: no padding here)."""
    hidden = model.model(inputs_embeds=embeds[None]).last_hidden_state
    return model.score(hidden[0, -1]).double()[0]


def reward(model, layout, embeds, ends, how, temperature=None) -> torch.Tensor:
    """The aggregated step reward (float64 scalar) of one input's embeddings ``[T, H]``."""
    s = step_scores(model, layout, embeds, ends)[None]
    return aggregate(s, torch.ones_like(s), how, temperature)[0]


def token_reward(model, layout, ids, start, rm_end_ids, how, temperature=None) -> torch.Tensor:
    """:func:`reward` of RM input ``ids`` whose response starts at ``start``."""
    embed = model.get_input_embeddings().weight
    embeds = embed[torch.as_tensor(ids)]
    return reward(model, layout, embeds, step_ends(ids, start, rm_end_ids), how, temperature)
