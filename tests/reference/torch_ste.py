"""PyTorch reference twins of ``nabla_jax.ste`` (written from ALGORITHM.md §1.1 and §2.1).

These are deliberately the plain, dense formulations: ``one_hot @ E`` as a matmul, and the
paper's ``y_hard - y_soft.detach() + y_soft`` straight-through softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class STEArgmax(torch.autograd.Function):
    """Forward ``one_hot(argmax z)`` (dtype of z); backward identity (the article's STE)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        idx = z.argmax(dim=-1)
        return F.one_hot(idx, num_classes=z.shape[-1]).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        return grad_out


def ste_argmax(z: torch.Tensor) -> torch.Tensor:
    """``[..., V]`` -> ``[..., V]`` one-hot with identity backward."""
    return STEArgmax.apply(z)


def st_softmax(
    z: torch.Tensor,
    tau: float = 1.0,
    hard: bool = True,
    noise: torch.Tensor | None = None,
    gumbel_scale: float = 0.0,
) -> torch.Tensor:
    """Hard straight-through (Gumbel-)softmax.

    ``y_soft = softmax((z + gumbel_scale * noise) / tau)``; ``noise`` is a given Gumbel sample (the
    JAX side draws it from a key; the same array is passed here). Hard: ``y_hard - y_soft.detach()
    + y_soft`` with ``y_hard = one_hot(argmax y_soft)``.
    """
    if noise is not None and gumbel_scale > 0:
        z = z + gumbel_scale * noise
    y_soft = F.softmax(z / tau, dim=-1)
    if not hard:
        return y_soft
    y_hard = F.one_hot(y_soft.argmax(dim=-1), num_classes=z.shape[-1]).to(z.dtype)
    return y_hard - y_soft.detach() + y_soft


def ste_argmax_embed(z: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """Dense ``ste_argmax(z) @ embed``: ``[..., V] @ [V, D] -> [..., D]``."""
    return ste_argmax(z) @ embed


def st_softmax_embed(
    z: torch.Tensor,
    embed: torch.Tensor,
    tau: float = 1.0,
    noise: torch.Tensor | None = None,
    gumbel_scale: float = 0.0,
) -> torch.Tensor:
    """Dense ``st_softmax(z, tau, hard=True) @ embed``."""
    return st_softmax(z, tau, True, noise, gumbel_scale) @ embed
