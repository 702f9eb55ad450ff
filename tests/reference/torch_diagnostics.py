"""PyTorch twin of the decoder's gradient diagnostics (nabla_jax.decoding.diagnostics), written
from their description: the resample distribution (temperature only, the current token left out
when asked) of the original and the refined logits, their KL, the proposed token's change in
log-probability, whether the argmax or the top-k set changed, and the right token's probability
before and after, and whether it was the top-1 before."""

from __future__ import annotations

import torch


def resample_logp(logits, current, tau: float, exclude_current: bool):
    z = logits.double() / tau
    if exclude_current:
        z = z.clone()
        z[torch.arange(z.shape[0]), current] = float("-inf")
    return torch.log_softmax(z, dim=-1)


def diagnose(original, refined, current, proposed, right, tau, exclude_current, k=8):
    lo = resample_logp(original, current, tau, exclude_current)
    lr = resample_logp(refined, current, tau, exclude_current)
    pr = lr.exp()
    kl = torch.where(pr > 0, pr * (lr - lo), torch.zeros_like(pr)).sum(-1)
    rows = torch.arange(original.shape[0])
    dlogp = lr[rows, proposed] - lo[rows, proposed]
    top1 = lr.argmax(-1) != lo.argmax(-1)
    top_r = torch.sort(torch.topk(lr, k).indices, dim=-1).values
    top_o = torch.sort(torch.topk(lo, k).indices, dim=-1).values
    topk = (top_r != top_o).any(-1)
    at = right.clamp(min=0)
    known = right >= 0
    before = torch.where(known, lo[rows, at].exp(), torch.zeros(len(rows), dtype=lo.dtype))
    after = torch.where(known, lr[rows, at].exp(), torch.zeros(len(rows), dtype=lo.dtype))
    right_top1 = known & (lo.argmax(-1) == at)
    return (
        kl,
        dlogp,
        top1,
        topk,
        before,
        after,
        lo[rows, proposed].exp(),
        lr[rows, proposed].exp(),
        right_top1,
    )
