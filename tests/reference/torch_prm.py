"""PyTorch twins of the process-reward heads (``nabla_jax.models.prm``), from their layouts.

* ``Qwen2ForProcessRewardModel``: transformers has no class for the Qwen2.5-Math-PRM layout, so
  this is one written from the model card's description: a Qwen2 decoder (``model``), then
  ``score`` = Sequential(Linear(H, H), ReLU, Linear(H, 2)) applied at every position; a step's
  score is the softmax probability of class 1 at each ``<extra_0>`` token.
* Token classification: transformers' own ``*ForTokenClassification`` (eval mode: no dropout);
  the step score is read the same way at the separator positions.
* An outcome RM read at every step end: ``*ForSequenceClassification`` run once per prefix
  ``ids[:end + 1]`` — the definition, not the one-pass shortcut the JAX side takes.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Model, Qwen2PreTrainedModel


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    """Qwen2 decoder + a 2-layer MLP score head; ``forward`` returns logits ``[B, T, 2]``."""

    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None):
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
        ).last_hidden_state
        return self.score(hidden)


def step_probabilities(logits: torch.Tensor, ids: torch.Tensor, separator: int) -> list:
    """Per row, the class-1 probabilities at the separator tokens (a list of 1-D tensors)."""
    probs = torch.softmax(logits.float(), dim=-1)[..., 1]
    return [probs[b][ids[b] == separator] for b in range(ids.shape[0])]


def orm_prefix_scores(orm, ids: torch.Tensor, ends: list) -> list:
    """Per row, the outcome RM's score of each prefix ending at ``ends[b]`` (its own pass)."""
    out = []
    for b, row_ends in enumerate(ends):
        scores = [orm(input_ids=ids[b : b + 1, : e + 1]).logits[0, 0] for e in row_ends]
        out.append(torch.stack(scores) if scores else torch.zeros(0))
    return out
