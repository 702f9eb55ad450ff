"""PyTorch reference for the sampling filters (written independently of the JAX code).

Follows the Hugging Face logits-warper formulation: top-k removes logits below the k-th largest
(``torch.topk``); top-p sorts *ascending*, removes tokens whose ascending cumulative probability is
``<= 1 - p`` and always keeps the most probable token. Two conventions are pinned down that the
warpers leave to sort order: tokens tied with the least probable kept logit are kept, and
temperature 0 means greedy (one-hot at the first argmax).
"""

from __future__ import annotations

import torch


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """``[..., V]`` -> ``[..., V]``; t == 0 keeps only the first argmax."""
    if t == 0:
        out = torch.full_like(logits, float("-inf"))
        idx = logits.argmax(dim=-1, keepdim=True)
        return out.scatter(-1, idx, logits.gather(-1, idx))
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep logits >= the k-th largest; k == 0 is off."""
    if k == 0:
        return logits
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """HF TopPLogitsWarper (ascending cumsum) plus keep-ties-at-the-cut; p == 1 is off."""
    if p >= 1.0:
        return logits
    sorted_logits, _ = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p)
    remove[..., -1:] = False
    kept_min = sorted_logits.masked_fill(remove, float("inf")).min(dim=-1, keepdim=True).values
    return logits.masked_fill(logits < kept_min, float("-inf"))


def filter_logits(logits: torch.Tensor, t: float, k: int, p: float) -> torch.Tensor:
    """Temperature -> top-k -> top-p."""
    return top_p(top_k(temperature(logits, t), k), p)
