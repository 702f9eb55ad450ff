"""PyTorch twin of ``nabla_jax.functional.step_scores``, from its definitions: per row, keep
the real steps (mask 1) as a short tensor and reduce it directly (no masking tricks)."""

from __future__ import annotations

import math

import torch


def aggregate(scores: torch.Tensor, mask: torch.Tensor, how: str, temperature=None, empty=0.0):
    """``[B, S]`` scores and mask → ``[B]`` (float64 when ``scores`` is)."""
    out = []
    for row, keep in zip(scores, mask.bool()):
        s = row[keep]
        if s.numel() == 0:
            out.append(torch.tensor(empty, dtype=scores.dtype))
        elif how == "last":
            out.append(s[-1])
        elif how == "min":
            out.append(s.min())
        elif how == "product":
            out.append(torch.prod(s))
        elif how == "mean":
            out.append(s.mean())
        elif how == "soft_min":
            t = float(temperature)
            out.append(-t * (torch.logsumexp(-s / t, dim=0) - math.log(s.numel())))
        else:
            raise ValueError(how)
    return torch.stack(out)
