"""A cross-vocabulary table applied in JAX: RM embeddings indexed by LM ids, and mapped ids.

DTO feeds the reward model a relaxed one-hot over the LM vocabulary, ``y [..., V_lm]``. With a
table ``table [V_lm]`` (:func:`nabla_jax.text.vocab_map.build_vocab_map`), the RM embedding of
``y`` is ``y @ E_rm[table]``: the RM rows gathered by the table form a ``[V_lm, H_rm]`` matrix,
so a hard one-hot of LM id ``v`` embeds exactly as RM id ``table[v]`` does, and the gradient
reaches every LM id through the row it maps to. Ids the RM scores directly are ``table[ids]``.

All functions are pure and jit-able; the table is an ordinary array argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["map_token_ids", "mapped_rm_embeddings", "rm_soft_embeds"]


def _check_table(table, what: str = "table"):
    table = jnp.asarray(table)
    if table.ndim != 1 or not jnp.issubdtype(table.dtype, jnp.integer):
        raise ValueError(
            f"{what} must be the [V_lm] integer LM-id → RM-id table (VocabMap.table), got "
            f"shape {table.shape} dtype {table.dtype}"
        )
    return table


def mapped_rm_embeddings(rm_embed: jax.Array, table) -> jax.Array:
    """``E_rm[table]``: the RM embedding table re-indexed by LM ids.

    Args:
      rm_embed: ``[V_rm, H_rm]`` RM input embeddings.
      table: ``[V_lm]`` int RM id of every LM id (all in ``[0, V_rm)``; checked when concrete).

    Returns:
      ``[V_lm, H_rm]`` in ``rm_embed``'s dtype; row ``v`` is ``rm_embed[table[v]]``.
    """
    table = _check_table(table)
    if getattr(rm_embed, "ndim", None) != 2:
        raise ValueError(
            f"rm_embed must be the [V_rm, H_rm] RM embedding matrix, got shape "
            f"{getattr(rm_embed, 'shape', None)}"
        )
    if not isinstance(table, jax.core.Tracer) and table.size:
        lo, hi = int(table.min()), int(table.max())
        if lo < 0 or hi >= rm_embed.shape[0]:
            raise ValueError(
                f"table holds RM ids in [{lo}, {hi}] outside the RM's {rm_embed.shape[0]} "
                "embedding rows; build it with build_vocab_map(..., rm_rows=V_rm)"
            )
    return jnp.take(rm_embed, table, axis=0)


def map_token_ids(table, lm_ids) -> jax.Array:
    """``table[lm_ids]``: the RM ids of LM token ids, any shape ``[...]`` → ``[...]`` int32."""
    table = _check_table(table)
    lm_ids = jnp.asarray(lm_ids)
    if not jnp.issubdtype(lm_ids.dtype, jnp.integer):
        raise ValueError(f"lm_ids must be integer token ids, got dtype {lm_ids.dtype}")
    if not isinstance(lm_ids, jax.core.Tracer) and lm_ids.size:
        lo, hi = int(lm_ids.min()), int(lm_ids.max())
        if lo < 0 or hi >= table.shape[0]:
            raise ValueError(
                f"lm_ids hold ids in [{lo}, {hi}] outside the table's {table.shape[0]} LM rows"
            )
    return jnp.take(table, lm_ids, axis=0).astype(jnp.int32)


def rm_soft_embeds(y: jax.Array, rm_embed: jax.Array, table) -> jax.Array:
    """RM input embeddings of a relaxed one-hot over the LM vocabulary: ``y @ E_rm[table]``.

    Args:
      y: ``[..., V_lm]`` soft (or straight-through hard) one-hot over LM ids.
      rm_embed: ``[V_rm, H_rm]`` RM input embeddings.
      table: ``[V_lm]`` LM-id → RM-id table.

    Returns:
      ``[..., H_rm]`` in ``rm_embed``'s dtype (accumulated in float32).
    """
    rows = mapped_rm_embeddings(rm_embed, table)
    if y.shape[-1] != rows.shape[0]:
        raise ValueError(
            f"y's last axis ({y.shape[-1]}) must be the LM vocabulary of the table "
            f"({rows.shape[0]} rows)"
        )
    out = jnp.einsum(
        "...v,vh->...h", y.astype(rows.dtype), rows, preferred_element_type=jnp.float32
    )
    return out.astype(rows.dtype)
