"""DTO and probe windows cut from the loop's state on device, in fixed shapes.

A window of row ``b`` starts at response index ``at[b]`` and spans ``K`` slots (the configured
window, capped at the response end). Its problem, as :func:`nabla_jax.functional.refine_rows`
expects it:

* LM prefix ``[B, P + L]``: the chat prompt ++ the response buffer, masked to the response's
  first ``at`` tokens (the committed ones and, for a probe further ahead, the ahead tokens before
  the window);
* RM prefix ``[B, Q + L]``: the RM template prefix ++ the same response tokens;
* window ``[B, K, V | D]``: the stored logits (or hidden states) of positions ``at … at+K-1``;
* RM suffix ``[B, (L - K) + S]``: the argmax tokens of the rest of the rollout after the window,
  then the RM template suffix — so the reward model always sees the whole response, while the
  LM log-likelihood term stops at the window's end.

Gaps between the parts are masked; positions follow the masks.
"""

from __future__ import annotations

import jax.numpy as jnp

from nabla_jax.decoding.state import RowState
from nabla_jax.functional.context import PrefixCaches
from nabla_jax.functional.packing import PaddedProblems
from nabla_jax.runtime.rows import take_span

__all__ = ["prefix_caches", "prefix_rows", "window_buckets", "window_problems"]


def window_problems(lm, state: RowState, at, rows, k: int, latents: bool, tail: int | None = None,
                    rm_ids=None):  # fmt: skip
    """The windows of the rows in ``rows [B]`` starting at ``at [B]`` (traceable).

    ``k``: window slots; ``tail``: slots for the rest of the rollout after the window (default
    ``L - k``: any rest fits; less when the caller knows every rest is shorter).
    ``rm_ids``: ``[V_lm]`` RM id of each LM id (the response tokens the RM reads are mapped),
    or None when the RM reads LM ids as they are.
    Returns ``(problems, window_mask [B, K])``; rows outside ``rows`` are masked filler
    (``row_valid`` 0, empty window).
    """
    resp = state.resp
    n = resp.tokens.shape[1]
    slots = jnp.arange(n)[None, :]
    before = (slots < at[:, None]).astype(jnp.int32)
    offsets = at[:, None] + jnp.arange(k)[None, :]
    window_mask = ((offsets < resp.length[:, None]) & rows[:, None]).astype(jnp.int32)
    store = resp.hidden if latents else resp.logits
    init = take_span(store, offsets).astype(jnp.float32) * window_mask[..., None]
    ref = lm.head_logits(init) if latents else init
    tail = n - k if tail is None else tail
    tail_at = at[:, None] + k + jnp.arange(tail)[None, :]
    tail_mask = (tail_at < resp.length[:, None]).astype(jnp.int32)
    tail_ids = take_span(resp.argmax, tail_at) * tail_mask
    rm_resp = resp.tokens if rm_ids is None else rm_ids[resp.tokens]
    rm_tail = tail_ids if rm_ids is None else rm_ids[tail_ids] * tail_mask
    problems = PaddedProblems(
        lm_prefix_ids=jnp.concatenate([state.prompt_ids, resp.tokens * before], axis=1),
        lm_prefix_mask=jnp.concatenate([state.prompt_mask, before], axis=1),
        rm_prefix_ids=jnp.concatenate([state.rm_prefix_ids, rm_resp * before], axis=1),
        rm_prefix_mask=jnp.concatenate([state.rm_prefix_mask, before], axis=1),
        rm_suffix_ids=jnp.concatenate([rm_tail, state.rm_suffix_ids], axis=1),
        rm_suffix_mask=jnp.concatenate([tail_mask, state.rm_suffix_mask], axis=1),
        init=init,
        window_mask=window_mask,
        ref_logits=ref.astype(jnp.float32),
        row_valid=rows.astype(jnp.float32),
    )
    return problems, window_mask


def prefix_caches(lm, state: RowState, at, latents: bool) -> PrefixCaches:
    """The keys/values of the prefixes of windows starting at ``at [B]``, from the caches the
    loop keeps for the current responses (nothing is recomputed): LM slots of the prompt and
    response tokens ``[0, at)``, the window written from slot ``P + at``; RM slots of the
    template prefix and the same tokens, the window written from ``Q + at``."""
    resp = state.resp
    n = resp.tokens.shape[1]
    before = (jnp.arange(n)[None, :] < at[:, None]).astype(jnp.int32)
    p, q = state.prompt_ids.shape[1], state.rm_prefix_ids.shape[1]
    lm_slots = state.lm_kv.mask.shape[1]
    rm_slots = state.rm_cache.k.shape[2]
    lm_mask = jnp.concatenate([state.prompt_mask, before], axis=1)
    rm_mask = jnp.concatenate([state.rm_prefix_mask, before], axis=1)
    if latents:
        last = lm.head_logits(take_span(resp.hidden, at[:, None])[:, 0])
    else:
        last = take_span(resp.logits, at[:, None])[:, 0]
    return PrefixCaches(
        lm_cache=state.lm_kv.cache,
        lm_key_mask=jnp.pad(lm_mask, ((0, 0), (0, lm_slots - p - n))),
        lm_write=p + at,
        lm_last=last.astype(jnp.float32),
        rm_cache=state.rm_cache,
        rm_key_mask=jnp.pad(rm_mask, ((0, 0), (0, rm_slots - q - n))),
        rm_write=q + at,
    )


def prefix_rows(given: PrefixCaches, index) -> PrefixCaches:
    """The prefix caches of the rows ``index [C]`` (the KV buffers are ``[layers, B, ...]``, the
    rest ``[B, ...]``)."""

    def cache_rows(cache):
        return type(cache)(*(x[:, index] for x in cache))

    return PrefixCaches(
        lm_cache=cache_rows(given.lm_cache), lm_key_mask=given.lm_key_mask[index],
        lm_write=given.lm_write[index], lm_last=given.lm_last[index],
        rm_cache=cache_rows(given.rm_cache), rm_key_mask=given.rm_key_mask[index],
        rm_write=given.rm_write[index],
    )  # fmt: skip


def window_buckets(window: int, length: int) -> tuple[tuple[int, int], ...]:
    """The ``(window, tail)`` shapes a DTO call may take, smallest first: the rest of a response
    from the selected position (window ++ tail) is bucketed to half a window, a window, or the
    whole response length. The loop compiles the largest ``DecodeConfig.dto_window_shapes`` of
    them, one branch each; a call takes the smallest that holds the longest rest among its rows,
    so with several shapes short rests do not pay for ``L``-slot reward inputs."""
    shapes = []
    for rest in (window // 2, window, length):
        if rest >= 1:
            shape = (min(window, rest), max(0, rest - window))
            if shape not in shapes:
                shapes.append(shape)
    return tuple(shapes)
