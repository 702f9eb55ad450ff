"""Per-row indexing of batched buffers: each row ``b`` reads or writes at its own position.

The one place the decode, the rollouts and the DTO context index ``[B, L, ...]`` buffers by a
position per row (traceable; indices are clipped into ``[0, L)``, so an idle row's
out-of-range position reads or writes a real slot harmlessly and never an undefined one).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["first_index", "put_at", "put_rows", "selected_first", "take_at", "take_span"]


def first_index(mask, none):
    """Index of the first True of each row of ``mask [B, L]``, or ``none`` where there is none."""
    return jnp.where(jnp.any(mask, axis=-1), jnp.argmax(mask, axis=-1), none)


def take_at(x, index):
    """``x [B, L, ...]`` at ``index [B]`` → ``[B, ...]``."""
    index = jnp.clip(index, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


def take_span(x, index):
    """``x [B, L, ...]`` at ``index [B, K]`` → ``[B, K, ...]`` (a window per row)."""
    index = jnp.clip(index, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def put_at(x, index, value, rows):
    """``x[b, index[b]] = value[b]`` for the rows in ``rows [B]``; other rows unchanged.

    ``x [B, L, ...]``, ``index [B]``, ``value [B, ...]`` (cast to ``x``'s dtype).
    """
    index = jnp.clip(index, 0, x.shape[1] - 1)
    b = jnp.arange(x.shape[0])
    keep = rows.reshape(rows.shape + (1,) * (x.ndim - 2))
    return x.at[b, index].set(jnp.where(keep, value, x[b, index]).astype(x.dtype))


def selected_first(rows, size: int):
    """The row indices ``[size]`` int32 with the rows of ``rows [B]`` first, in row order, then
    the others (padded with 0 past ``B``), and how many rows are selected (a scalar)."""
    order = jnp.argsort(~rows, stable=True).astype(jnp.int32)
    order = jnp.pad(order, (0, max(0, size - order.shape[0])))[:size]
    return order, jnp.sum(rows.astype(jnp.int32))


def put_rows(x, index, value, valid):
    """``x[index[i]] = value[i]`` where ``valid [C]``; ``x [B, ...]``, ``index [C]``, ``value
    [C, ...]`` (cast to ``x``'s dtype). Invalid entries write nothing, so an index repeated
    by padding never overwrites a valid one."""
    target = jnp.where(valid, index, x.shape[0])  # out of range: dropped
    return x.at[target].set(value.astype(x.dtype), mode="drop")
