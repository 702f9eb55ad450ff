"""A reward-model training loss that makes the RM's input gradient point at the right token.

DTO reads the reward model through its gradient with respect to the input embeddings: at the
selected position ``t`` of a response, swapping the current token ``c`` for ``v`` changes the
score by about ``g_t · (e_v − e_c)`` (``g_t = ∂score/∂e_t``, ``e`` the embedding table's rows).
A reward model trained on discrete tokens only is never asked to make that estimate meaningful.

Here, for every wrong response whose first wrong token ``t`` is known (it is the first response
token that leaves the reference solution, and the reference names the right token ``r`` there),
the linear estimates ``s_v = g_t · (e_v − e_c)`` are read as logits of a softmax (divided by
``temperature``) over the swaps DTO can actually make — the ``candidates`` tokens a language
model finds plausible at ``t`` (DTO reweights the LM's own distribution, so an implausible token
never gets sampled), the right token, and keeping the current one (``s_c = 0``) — and their
cross-entropy against ``r`` is the loss: the gradient must rank the right swap above keeping the
current token and above the other plausible tokens. It is a second-order loss (the gradient of a
gradient), computed exactly by JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def lm_candidates(lm, ids, mask, position, k: int, batch: int = 256):
    """``[N, k]`` the ``k`` most probable next tokens of ``lm`` at ``position`` of each RM input
    row (its logits at ``position − 1``; the RM template frames the response like the LM's chat
    template does, so the response prefix is what the LM saw). Rows without a target get
    zeros."""

    @jax.jit
    def top(ids, mask, at):
        logits = lm.logits(ids, mask)  # [b, T, V]
        rows = jnp.arange(ids.shape[0])
        return jax.lax.top_k(logits[rows, jnp.maximum(at - 1, 0)], k)[1]

    out = np.zeros((len(ids), k), np.int32)
    for i in range(0, len(ids), batch):
        j = slice(i, i + batch)
        if (position[j] >= 0).any():
            got = np.asarray(top(ids[j], mask[j], position[j]))
            out[j] = np.where(position[j, None] >= 0, got, 0)
    return out


def first_error_targets(tok, samples, max_len):
    """``(position [N], right [N])``: the RM-input index of each response's first token that
    leaves its reference solution, and the reference token there; ``-1, 0`` for a response that
    follows the reference to its end (nothing to correct) or whose first error falls in the part
    that ``max_len`` cuts (inputs laid out as ``train_rm.encode_rm`` does)."""
    from nabla_jax.text.templates import rm_prefix_suffix_ids

    pos = np.full(len(samples), -1, np.int32)
    right = np.zeros(len(samples), np.int32)
    frames = {}
    for i, (q, text, _, solution) in enumerate(samples):
        if q not in frames:
            frames[q] = tuple(len(x) for x in rm_prefix_suffix_ids(tok, q))
        n_prefix, n_suffix = frames[q]
        resp = tok.encode(text, add_special_tokens=False)
        ref = tok.encode(solution, add_special_tokens=False)
        for j, t in enumerate(resp):
            if j >= len(ref):
                break
            if t != ref[j]:
                at = n_prefix + j
                if at < max_len - n_suffix:
                    pos[i], right[i] = at, ref[j]
                break
    return pos, right


def swap_estimates(model, ids, mask, position, candidates):
    """``(estimates [B, V], allowed [B, V])``: the linear estimates ``s_v = g_t · (e_v − e_c)``
    at ``position`` (clamped to 0 where it is −1), and which swaps are plausible — the
    ``candidates [B, k]`` and keeping the current token (``s_c = 0``)."""
    table = model.embed_matrix()  # [V, D]
    emb = model.embed(ids)  # [B, T, D]

    def total(e):  # rows are independent: the gradient of the sum is each row's own
        return jnp.sum(model.score(inputs_embeds=e, attention_mask=mask))

    grad = jax.grad(total)(emb)  # [B, T, D]
    rows = jnp.arange(ids.shape[0])
    at = jnp.maximum(position, 0)
    g = grad[rows, at]  # [B, D]
    estimates = g @ table.T - jnp.sum(g * emb[rows, at], axis=-1, keepdims=True)
    cur = jnp.take_along_axis(ids, at[:, None], axis=1)[:, 0]
    v = jnp.arange(table.shape[0])[None, :]
    allowed = jnp.any(v[:, :, None] == candidates[:, None, :], axis=-1) | (v == cur[:, None])
    return estimates, allowed


def gradient_alignment_loss(model, ids, mask, position, right, candidates, temperature: float):
    """Mean over the rows with ``position ≥ 0`` of the cross-entropy of the swap estimates at
    ``position`` against ``right`` (0 when no row has a target), over ``candidates``, ``right``
    and the current token (see the module doc).

    ``ids``, ``mask``: ``[B, T]`` RM inputs; ``position``, ``right``: ``[B]``;
    ``candidates``: ``[B, k]`` token ids (repeats of ``right`` or the current token are fine)."""
    estimates, allowed = swap_estimates(model, ids, mask, position, candidates)
    allowed = allowed | (jnp.arange(estimates.shape[-1])[None, :] == right[:, None])
    logits = jnp.where(allowed, estimates / temperature, -1e9)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, right)
    valid = (position >= 0).astype(jnp.float32)
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def right_swap_rank(model, ids, mask, position, right, candidates):
    """``[B]`` rank (0 = first) of the right token among the swap estimates at ``position`` over
    ``candidates [B, k]`` and keeping the current token (−1 where there is no target): how
    often the gradient names the right swap among the plausible ones."""
    estimates, allowed = swap_estimates(model, ids, mask, position, candidates)
    est = jnp.where(allowed, estimates, -jnp.inf)
    rows = jnp.arange(ids.shape[0])
    rank = jnp.sum(est > est[rows, right][:, None], axis=-1)
    return jnp.where(position >= 0, rank, -1)
