"""Step 6 — accept: keep a proposal only if the reward says it is better.

The proposal is accepted iff its score exceeds the threshold: the current response's score, or
that plus ``accept_margin`` (fewer false acceptances from a noisy reward model). Without
rejection sampling every proposal is accepted.
"""

from __future__ import annotations

import jax

from nabla_jax.decoding.config import DecodeHyper, DecodeProgram
from nabla_jax.decoding.steps.resample import Proposal
from nabla_jax.decoding.steps.score import Scores

__all__ = ["accept", "acceptance_threshold"]


def acceptance_threshold(scores: Scores, h: DecodeHyper, *, prog: DecodeProgram) -> jax.Array:
    """The score ``[B]`` a proposal must beat: the current score (plus the margin, when set)."""
    if not prog.accept_margin:
        return scores.current
    return scores.current + h.accept_margin


def accept(proposal: Proposal, scores: Scores, h: DecodeHyper, *,
           prog: DecodeProgram) -> jax.Array:  # fmt: skip
    """``[B]`` bool: the proposals kept (traceable)."""
    if not prog.rejection_sampling:
        return proposal.proposing
    return proposal.proposing & (scores.new > acceptance_threshold(scores, h, prog=prog))
