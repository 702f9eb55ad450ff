"""PyTorch twin of the first-order fidelity diagnostic (nabla_jax.decoding.fidelity), from its
description: the reward model's gradient with respect to the input embedding at a position, its
linear estimate of the reward change for swapping each candidate token in, the actual change
from re-scoring each swapped response, and the Spearman correlation of the two."""

from __future__ import annotations

import numpy as np
import scipy.stats
import torch


def _score(rm, ids=None, embeds=None):
    out = rm(input_ids=ids, inputs_embeds=embeds).logits[0]
    return out.mean()


def fidelity(rm, prefix, response, suffix, at: int, candidates):
    """``(rho, linear [k], actual [k])`` for one row: RM input ``prefix ++ response ++ suffix``
    (lists of ids), the token at response position ``at``, candidate ids ``[k]``."""
    ids = torch.tensor([list(prefix) + list(response) + list(suffix)])
    table = rm.get_input_embeddings().weight.detach()
    embeds = table[ids].clone().requires_grad_(True)
    base = _score(rm, embeds=embeds)
    (grad,) = torch.autograd.grad(base, embeds)
    g = grad[0, len(prefix) + at]
    cur = response[at]
    linear = np.array([float(g @ (table[v] - table[cur])) for v in candidates])
    actual = []
    with torch.no_grad():
        for v in candidates:
            swapped = list(response)
            swapped[at] = int(v)
            row = torch.tensor([list(prefix) + swapped + list(suffix)])
            actual.append(float(_score(rm, ids=row)) - float(base))
    actual = np.array(actual)
    return scipy.stats.spearmanr(linear, actual).statistic, linear, actual
