"""PyTorch reference twins of ``nabla_jax.functional.objectives``.

Written from the loss descriptions in docs/algorithm.md#the-loss and
docs/algorithm.md#the-articles-sketch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def article_reward(rm_logits: torch.Tensor) -> torch.Tensor:
    """The sketch: ``rm_logits[:, -1, :].mean()`` for ``[B, T, C]`` logits."""
    return rm_logits[:, -1, :].mean()


def score_reward(scores: torch.Tensor) -> torch.Tensor:
    """Mean of ``[B]`` (or ``[B, 1]``) sequence-classification scores."""
    return scores.reshape(scores.shape[0]).mean()


def kl_ref_theta(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """The sketch's KL: ``F.kl_div(log_softmax(logits), softmax(ref), "batchmean")``."""
    return F.kl_div(
        F.log_softmax(logits, dim=-1),
        F.softmax(ref_logits.detach(), dim=-1),
        reduction="batchmean",
    )


def kl_theta_ref(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_θ ‖ p_ref) with the same normalisation: kl_div with the roles swapped."""
    return F.kl_div(
        F.log_softmax(ref_logits.detach(), dim=-1),
        F.softmax(logits, dim=-1),
        reduction="batchmean",
    )


def paper_loglik(
    y: torch.Tensor,
    pred_logits: torch.Tensor,
    nll_coeff: float = 1e-3,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``nll_coeff * Σ_k mask_k Σ_v y[k, v] log_softmax(pred)[k, v]``."""
    per_pos = (y * F.log_softmax(pred_logits, dim=-1)).sum(-1)
    if mask is not None:
        per_pos = per_pos * mask.to(per_pos.dtype)
    return nll_coeff * per_pos.sum()


def article_loss(reward: torch.Tensor, kl: torch.Tensor, lambda_kl: float) -> torch.Tensor:
    return -reward + lambda_kl * kl


def paper_loss(
    loglik: torch.Tensor, reward: torch.Tensor, reward_coeff: float = 1.0
) -> torch.Tensor:
    return -(loglik + reward_coeff * reward)
