"""Step 3 — resample: draw a new token at the selected position from the refined logits.

With ``resample_excludes_current`` the current token is left out, so every selected position
proposes; with ``positions_per_iteration`` ``m`` > 1 the first ``m`` qualifying positions of the
refined window are each redrawn and proposed together.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nabla_jax.decoding.config import DecodeHyper, DecodeProgram
from nabla_jax.decoding.keys import RESAMPLE, stream_keys
from nabla_jax.decoding.sampling import sample_token
from nabla_jax.decoding.state import RowState
from nabla_jax.decoding.steps.refine import Refined
from nabla_jax.decoding.steps.select import Selection
from nabla_jax.runtime.rows import put_at, take_at

__all__ = ["Proposal", "resample", "resample_several", "resample_tokens"]


class Proposal(NamedTuple):
    """What :func:`resample` proposes, per row.

    Attributes:
      old: ``[B]`` int32 the current token at the selected position.
      token: ``[B]`` int32 the drawn token there.
      proposing: ``[B]`` bool the row proposes a changed response.
      last: ``[B]`` int32 the last resampled position (the selected one when ``m`` = 1).
      tokens: ``[B, L]`` int32 the proposed response's tokens up to ``last`` (the rest stale).
    """

    old: jax.Array
    token: jax.Array
    proposing: jax.Array
    last: jax.Array
    tokens: jax.Array


def resample_tokens(keys, logits, current, h: DecodeHyper, prog: DecodeProgram):
    """One token ``[B]`` drawn from ``logits [B, V]`` with the resample settings (``keys [B]``);
    with ``resample_excludes_current`` the ``current [B]`` token is left out, so the draw always
    differs from it."""
    r = h.resample
    if prog.resample_excludes_current:
        v = jnp.arange(logits.shape[-1])[None, :]
        logits = jnp.where(v == current[:, None], -jnp.inf, logits)
    return jax.vmap(lambda k, z: sample_token(k, z, r.temperature, r.top_k, r.top_p))(keys, logits)


def resample_several(keys, window_logits, tokens, at, qualified, h: DecodeHyper,
                     prog: DecodeProgram):  # fmt: skip
    """The first ``positions_per_iteration`` qualifying positions in ``[at, at + K)`` (``at``
    always among them), each resampled from its refined logits.

    ``window_logits [B, K, V]``, ``tokens [B, L]``, ``at [B]``, ``qualified [B, L]``. Returns
    ``(picked [B, L] bool, tokens [B, L])``: the picked positions and the response with each
    picked position's draw in place.
    """
    b, n = tokens.shape
    k = window_logits.shape[1]
    slots = jnp.arange(n)[None, :]
    inside = (slots >= at[:, None]) & (slots < at[:, None] + k)
    cand = (qualified & inside) | (slots == at[:, None])
    picked = cand & (jnp.cumsum(cand, axis=-1) <= prog.positions_per_iteration)
    offsets = jnp.clip(at[:, None] + jnp.arange(k)[None, :], 0, n - 1)
    current = jnp.take_along_axis(tokens, offsets, axis=1)  # [B, K]
    sub = jax.vmap(lambda key: jax.random.split(key, k))(keys)  # [B, K]
    flat = resample_tokens(
        sub.reshape(-1), window_logits.reshape(b * k, -1), current.reshape(-1), h, prog
    ).reshape(b, k)
    drawn = jnp.take_along_axis(flat, jnp.clip(slots - at[:, None], 0, k - 1), axis=1)
    return picked, jnp.where(picked, drawn, tokens).astype(tokens.dtype)


def resample(state: RowState, sel: Selection, refined: Refined, h: DecodeHyper, *,
             prog: DecodeProgram, right=None) -> Proposal:  # fmt: skip
    """The proposals of the rows ``sel`` chose (traceable).

    ``right``: ``[B]`` the next-token oracle's right token at the selected position (−1 where
    it names none); with ``oracle_proposals`` it replaces the draw where it differs from the
    current token.
    """
    resp, committed, chosen = state.resp, sel.committed, sel.chosen
    keys = stream_keys(state.base_key, RESAMPLE, sel.iterations)
    old = take_at(resp.tokens, committed)
    if prog.positions_per_iteration == 1:
        tok = resample_tokens(keys, refined.logits[:, 0], old, h, prog)
        if prog.oracle_proposals:
            tok = jnp.where((right >= 0) & (right != old), right, tok).astype(tok.dtype)
        proposing = chosen & (tok != old)
        return Proposal(old, tok, proposing, committed, put_at(resp.tokens, committed, tok,
                                                                proposing))  # fmt: skip
    slots = jnp.arange(resp.tokens.shape[1])[None, :]
    picked, new_tokens = resample_several(keys, refined.logits, resp.tokens, committed,
                                          sel.qualified & chosen[:, None], h, prog)  # fmt: skip
    tok = take_at(new_tokens, committed)
    proposing = chosen & jnp.any(picked & (new_tokens != resp.tokens), axis=-1)
    last = jnp.max(jnp.where(picked, slots, committed[:, None]), axis=-1)
    tokens = jnp.where(proposing[:, None], new_tokens, resp.tokens)
    return Proposal(old, tok, proposing, last, tokens)
