"""Per-row indexing of ``[B, L, ...]`` buffers at a position per row (traceable helpers)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["first_index", "put_at", "take_at"]


def first_index(mask, none):
    """Index of the first True of each row of ``mask [B, L]``, or ``none`` where there is none."""
    return jnp.where(jnp.any(mask, axis=-1), jnp.argmax(mask, axis=-1), none)


def take_at(x, index):
    """``x [B, L, ...]`` at ``index [B]`` (clipped) → ``[B, ...]``."""
    index = jnp.clip(index, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


def put_at(x, index, value, rows):
    """``x[b, index[b]] = value[b]`` for ``rows`` (index clipped; other rows unchanged)."""
    index = jnp.clip(index, 0, x.shape[1] - 1)
    b = jnp.arange(x.shape[0])
    return x.at[b, index].set(jnp.where(rows, value, x[b, index]).astype(x.dtype))
