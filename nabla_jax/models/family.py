"""What a model family declares, in one object: ``ModelFamily``.

Every family (``models/decoder/``, ``models/gpt2.py``) builds one ``ModelFamily`` next to its Flax
module, holding every fact about it that the generic code needs: the module class, the checkpoint
key table, where the embedding and the layer stack live, the partition rules, and the mapping of
Hugging Face configs in both directions. ``models/registry.py`` lists the families; loading,
export and sharding look the family up there and never branch on its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jax.sharding import PartitionSpec as P

from nabla_jax.models.keys import KeyTable
from nabla_jax.runtime.sharding import DATA as DATA_AXIS
from nabla_jax.runtime.sharding import MODEL as MODEL_AXIS

__all__ = ["DATA_AXIS", "MODEL_AXIS", "ModelFamily", "PartitionRules", "head_partition_rules"]

# Mesh axis names: nabla_jax.runtime.sharding.DATA / MODEL, under the names the families use.

# ((parameter path regex, spec), …): the first rule whose regex fully matches a path wins.
PartitionRules = tuple[tuple[str, P], ...]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """Everything family-specific, for the generic loader, exporter and sharding code.

    Attributes:
      name: short name ("decoder", "gpt2").
      model_types: the Hugging Face ``model_type`` values this family reads and writes.
      module: Flax module class, built as ``module(cfg, dtype, head)`` with head "lm" or "score";
        its ``__call__(inputs_embeds [B, T, D], positions [B, T], key_mask [B, S], cache,
        write_index)`` returns (final-norm hidden ``[B, T, D]``, updated cache or None).
      keys: checkpoint key table (both directions).
      embedding: parameter path of the ``[V, D]`` input embedding table.
      layer_stack: top-level parameter name under which the per-layer leaves are stacked.
      from_hf_config: HF ``config.json`` dict → ``ModelConfig``.
      to_hf_config: (``ModelConfig``, head "lm" | "score") → HF ``config.json`` dict; raises
        ``UnsupportedModelError`` for settings the family's HF config cannot express.
      partition_rules: (config, model axis size ``m``) → ``PartitionRules`` for every leaf.
      parallel_dims: config → ``{name: size}`` that the model axis size must divide.
    """

    name: str
    model_types: tuple[str, ...]
    module: type
    keys: KeyTable
    embedding: str
    layer_stack: str
    from_hf_config: Callable
    to_hf_config: Callable
    partition_rules: Callable
    parallel_dims: Callable

    def __post_init__(self):
        # The key table's layer rows and the module's stack must agree.
        prefix = self.layer_stack + "/"
        for row in self.keys.rows:
            if row.stacked != row.path.startswith(prefix):
                raise ValueError(
                    f"{self.name}: key row {row.hf!r} → {row.path!r} disagrees with the layer "
                    f"stack {self.layer_stack!r} (a {{layer}} name must fill a leaf under it)"
                )
        if self.keys.row_for(self.embedding) is None:
            raise ValueError(f"{self.name}: no key row fills the embedding {self.embedding!r}")


def head_partition_rules(cfg, m: int, embedding: str) -> PartitionRules:
    """Rules shared by the families: the embedding ``[V, D]`` split over vocabulary rows and the
    untied LM head ``[D, V]`` over vocabulary columns when ``V % m == 0`` (else replicated); the
    small score head ``[D, C]`` replicated."""
    split = cfg.vocab_size % m == 0
    return (
        (embedding, P(MODEL_AXIS, None) if split else P()),
        ("lm_head", P(None, MODEL_AXIS) if split else P()),
        ("score", P()),
    )
