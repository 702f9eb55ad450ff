"""A cross-vocabulary table applied in JAX: RM embeddings indexed by LM ids, and mapped ids.

DTO feeds the reward model a relaxed one-hot over the LM vocabulary, ``y [..., V_lm]``. With a
table ``table [V_lm]`` (:func:`nabla_jax.text.vocab_map.build_vocab_map`), the RM embedding of
``y`` is ``y @ E_rm[table]``: the RM rows gathered by the table form a ``[V_lm, H_rm]`` matrix,
so a hard one-hot of LM id ``v`` embeds exactly as RM id ``table[v]`` does, and the gradient
reaches every LM id through the row it maps to. Ids the RM scores directly are ``table[ids]``.

All functions are pure and jit-able; the table is an ordinary array argument.
:func:`resolve_rm_vocabulary` ties the pieces together for a (policy, reward model) pair: it
resolves the ``rm_vocab`` mode and builds the table once, on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nabla_jax.text.vocab import DEFAULT_SAMPLES
from nabla_jax.text.vocab_map import VocabMap, build_vocab_map, resolve_rm_vocab

__all__ = [
    "RMVocabulary",
    "map_token_ids",
    "mapped_rm_embeddings",
    "resolve_rm_vocabulary",
    "rm_soft_embeds",
]


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


@dataclasses.dataclass(frozen=True, eq=False)
class RMVocabulary:
    """How LM token ids reach a reward model.

    Attributes:
      mode: ``"shared"`` (ids unchanged) or ``"by_string"`` (through ``vocab_map.table``).
      vocab_map: the :class:`~nabla_jax.text.vocab_map.VocabMap` (None when shared).
    """

    mode: str
    vocab_map: VocabMap | None = None

    def rm_ids(self, lm_ids):
        """RM ids of LM ids ``[...]`` (the ids themselves when shared)."""
        return jnp.asarray(lm_ids) if self.vocab_map is None else map_token_ids(
            self.vocab_map.table, lm_ids
        )  # fmt: skip

    def rm_id_list(self, lm_ids) -> list[int]:
        """RM ids of LM ids given as a host list (the ids themselves when shared)."""
        if self.vocab_map is None:
            return [int(t) for t in lm_ids]
        table = self.vocab_map.table
        return [int(table[int(t)]) for t in lm_ids]

    def embed_table(self, rm_embed):
        """``[V_lm, H_rm]`` RM rows for the straight-through path: ``rm_embed`` itself when
        shared, ``rm_embed[table]`` otherwise (pass it as ``refine(..., rm_embed=)``)."""
        if self.vocab_map is None:
            return jnp.asarray(rm_embed)
        return mapped_rm_embeddings(rm_embed, self.vocab_map.table)


def resolve_rm_vocabulary(
    lm: Any, rm: Any, mode: str | None = None, *, samples: Sequence[str] = DEFAULT_SAMPLES
) -> RMVocabulary:
    """The :class:`RMVocabulary` of a policy and a reward model, checked before any compute.

    Args:
      lm: the policy (``.tokenizer``, ``.config.vocab_size``), e.g. a ``CausalLM``.
      rm: the reward model (``.tokenizer`` or None, ``.config.vocab_size``): a ``RewardModel``
        or a ``ProcessRewardModel``.
      mode: ``"shared"``, ``"by_string"`` or None (the default of
        :func:`~nabla_jax.text.vocab_map.resolve_rm_vocab`).
      samples: strings the by-string table must carry from LM to RM encoding unchanged.

    Raises:
      ValueError / VocabMismatchError: as ``resolve_rm_vocab`` and ``build_vocab_map``.
    """
    if getattr(lm, "tokenizer", None) is None:
        raise ValueError("the LM has no tokenizer: load it with its tokenizer files")
    lm_rows, rm_rows = int(lm.config.vocab_size), int(rm.config.vocab_size)
    resolved = resolve_rm_vocab(mode, lm.tokenizer, rm.tokenizer, lm_rows, rm_rows)
    if resolved == "shared":
        return RMVocabulary("shared")
    table = build_vocab_map(lm.tokenizer, rm.tokenizer, lm_rows, rm_rows, samples=samples)
    return RMVocabulary("by_string", table)
