"""One model configuration, read from a Hugging Face ``config.json``.

``ModelConfig`` is the union of the settings of every family (decoder: Llama, Qwen2, Qwen3,
Mistral through switches; GPT-2). Each family maps its own HF config onto it in both directions
(``from_hf_config`` / ``to_hf_config`` in the family's module; ``registry.config_from_hf``
picks the family by ``model_type``); the fields every family shares (labels, special token ids)
are mapped here. This module imports nothing else of nabla-jax. It is a frozen dataclass,
hashable, so it can be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

__all__ = [
    "SUPPORTED_ROPE_TYPES",
    "ModelConfig",
    "UnsupportedModelError",
    "common_from_hf",
    "common_to_hf",
    "read_hf_config",
]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its settings is not implemented."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model, independent of its weights.

    Attributes:
      model_type: the Hugging Face ``model_type`` ("qwen2", "llama", ...; its family — the
        implementation that serves it — is ``registry.family_of(cfg)``).
      vocab_size: rows of the embedding table ``V``.
      hidden_size: model width ``D``.
      intermediate_size: MLP width ``F``.
      num_layers: transformer blocks ``L``.
      num_heads: query heads ``H``; ``num_kv_heads``: key/value heads (GQA when < H).
      head_dim: per-head width ``Dh``.
      max_position_embeddings: longest sequence the positions support.
      rope_theta / rope_type / rope_factor / rope_low_freq_factor / rope_high_freq_factor /
      rope_original_max_position: rotary embedding settings (decoder family).
      norm_eps: RMSNorm (decoder) or LayerNorm (GPT-2) epsilon.
      attention_bias: q/k/v projections carry a bias (Qwen2); ``o_bias``: output projection too.
      mlp_bias: gate/up/down projections carry a bias.
      qk_norm: per-head RMSNorm on queries and keys before rotary (Qwen3).
      sliding_window: window size for layers whose ``layer_types`` entry is sliding, else None.
      layer_types: per-layer "full_attention" / "sliding_attention".
      tie_word_embeddings: the LM head is the input embedding (one shared parameter).
      hidden_act: MLP activation name.
      num_labels: outputs of the sequence-classification score head.
      pad_token_id / eos_token_id / bos_token_id: special ids from the config (may be None).
      scale_attn_weights / scale_attn_by_inverse_layer_idx: GPT-2 attention scaling switches.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    attention_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    num_labels: int = 1
    pad_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    bos_token_id: int | None = None
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False

    def __post_init__(self):
        # Whether a family implements model_type is the registry's question (registry.family_of).
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_type {self.rope_type!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)})."
            )
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
            )

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def layer_window(self, layer: int) -> int | None:
        """Sliding-window size of ``layer`` (None: full attention)."""
        if self.sliding_window is None:
            return None
        if not self.layer_types:
            return self.sliding_window
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None


def read_hf_config(hf: Any) -> dict:
    """An HF config as a plain dict: from a ``PretrainedConfig``, a dict, a ``config.json`` path
    or the directory holding it."""
    if isinstance(hf, (str, os.PathLike)):
        path = os.fspath(hf)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            hf = json.load(f)
    if not isinstance(hf, dict):
        hf = hf.to_dict()
    return hf


def common_from_hf(hf: dict) -> dict:
    """``ModelConfig`` fields every family reads alike: score-head labels and special ids."""
    if "num_labels" in hf:
        num_labels = int(hf["num_labels"])
    else:
        num_labels = len(hf.get("id2label") or {0: 0, 1: 1})
    eos = hf.get("eos_token_id")
    return dict(
        num_labels=num_labels,
        pad_token_id=hf.get("pad_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        bos_token_id=hf.get("bos_token_id"),
    )


def common_to_hf(cfg: ModelConfig) -> dict:
    """The inverse of ``common_from_hf``, plus the float32 dtype the exported weights have."""
    eos = cfg.eos_token_id
    return {
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "pad_token_id": cfg.pad_token_id,
        "num_labels": cfg.num_labels,
        "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(cfg.num_labels)},
        "torch_dtype": "float32",
        "dtype": "float32",
    }
