"""PyTorch reference twins of ``nabla_jax.functional.ste`` (written from
docs/algorithm.md#the-straight-through-relaxation).

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


def gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel samples drawn in torch: ``-log(-log U)``, ``U ~ Uniform(0, 1)`` (clamped
    away from 0 and 1 so that both logs stay finite)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    u = u.clamp(torch.finfo(torch.float64).tiny, 1.0 - torch.finfo(torch.float64).eps)
    return (-torch.log(-torch.log(u))).float()


def st_softmax(
    z: torch.Tensor,
    tau: float = 1.0,
    hard: bool = True,
    noise: torch.Tensor | None = None,
    gumbel_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hard straight-through (Gumbel-)softmax.

    ``y_soft = softmax((z + gumbel_scale * noise) / tau)``; ``noise`` is a given Gumbel sample, or,
    when it is None and ``generator`` is given, one the twin draws itself (:func:`gumbel_noise`).
    Hard: ``y_hard - y_soft.detach() + y_soft`` with ``y_hard = one_hot(argmax y_soft)``.
    """
    if noise is None and generator is not None and gumbel_scale > 0:
        noise = gumbel_noise(z.shape, generator)
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
