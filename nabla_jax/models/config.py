"""One model configuration, read from a Hugging Face ``config.json``.

``ModelConfig`` covers the decoder family (Llama, Qwen2, Qwen3, Mistral: config switches) and GPT-2.
It is a frozen dataclass, hashable, so it can be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

DECODER_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
SUPPORTED_FAMILIES = DECODER_FAMILIES + ("gpt2",)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its settings is not implemented."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one model, independent of its weights.

    Attributes:
      family: one of ``SUPPORTED_FAMILIES`` (Hugging Face ``model_type``).
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

    family: str
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
        if self.family not in SUPPORTED_FAMILIES:
            raise UnsupportedModelError(
                f"model_type {self.family!r} is not supported; nabla-jax implements "
                f"{', '.join(SUPPORTED_FAMILIES)}. Convert the checkpoint to one of these families."
            )
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
    def is_decoder_family(self) -> bool:
        return self.family in DECODER_FAMILIES

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

    @classmethod
    def from_hf(cls, hf: Any) -> ModelConfig:
        """Build from an HF config: a ``PretrainedConfig``, a dict, or a ``config.json`` path."""
        if isinstance(hf, (str, os.PathLike)):
            path = os.fspath(hf)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path) as f:
                hf = json.load(f)
        if not isinstance(hf, dict):
            hf = hf.to_dict()
        family = hf.get("model_type")
        if family not in SUPPORTED_FAMILIES:
            raise UnsupportedModelError(
                f"model_type {family!r} (architectures {hf.get('architectures')}) is not "
                f"supported; "
                f"nabla-jax implements {', '.join(SUPPORTED_FAMILIES)}."
            )
        if family == "gpt2":
            return _gpt2_from_hf(hf)
        return _decoder_from_hf(family, hf)


def _num_labels(hf: dict) -> int:
    if "num_labels" in hf:
        return int(hf["num_labels"])
    return len(hf.get("id2label") or {0: 0, 1: 1})


def _eos(hf: dict):
    eos = hf.get("eos_token_id")
    return tuple(eos) if isinstance(eos, list) else eos


def _rope_settings(hf: dict) -> dict:
    """Rotary settings from v5 ``rope_parameters`` or v4 ``rope_theta`` + ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    if scaling:
        params = {**scaling, **params}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedModelError("partial_rotary_factor != 1 is not supported")
    out = dict(rope_theta=float(theta), rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        out["rope_low_freq_factor"] = float(params["low_freq_factor"])
        out["rope_high_freq_factor"] = float(params["high_freq_factor"])
        out["rope_original_max_position"] = int(params["original_max_position_embeddings"])
    return out


def _decoder_from_hf(family: str, hf: dict) -> ModelConfig:
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or hidden // heads
    layers = int(hf["num_hidden_layers"])
    # Which projections carry a bias, per Hugging Face's modeling files.
    if family == "qwen2":
        attention_bias, o_bias = True, False
    elif family == "mistral":
        attention_bias = o_bias = False
    else:
        attention_bias = o_bias = bool(hf.get("attention_bias", False))
    sliding = hf.get("sliding_window")
    layer_types = tuple(hf.get("layer_types") or ())
    if family == "qwen2" or family == "qwen3":
        if not hf.get("use_sliding_window", False):
            sliding = None
    if family == "mistral" and sliding is not None and not layer_types:
        layer_types = ("sliding_attention",) * layers
    if sliding is None:
        layer_types = ()
    elif not layer_types:
        # Qwen2-style: layers from max_window_layers on use the window.
        mwl = int(hf.get("max_window_layers", layers))
        layer_types = tuple(
            "sliding_attention" if i >= mwl else "full_attention" for i in range(layers)
        )
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "gelu", "gelu_pytorch_tanh", "relu"):
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported")
    return ModelConfig(
        family=family,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        attention_bias=attention_bias,
        o_bias=o_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=family == "qwen3",
        sliding_window=int(sliding) if sliding is not None else None,
        layer_types=layer_types,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hidden_act=act,
        num_labels=_num_labels(hf),
        pad_token_id=hf.get("pad_token_id"),
        eos_token_id=_eos(hf),
        bos_token_id=hf.get("bos_token_id"),
        **_rope_settings(hf),
    )


def _gpt2_from_hf(hf: dict) -> ModelConfig:
    hidden = int(hf["n_embd"])
    heads = int(hf["n_head"])
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu", "relu", "gelu_pytorch_tanh"):
        raise UnsupportedModelError(f"GPT-2 activation_function {act!r} is not supported")
    if hf.get("reorder_and_upcast_attn", False):
        raise UnsupportedModelError("GPT-2 reorder_and_upcast_attn=True is not supported")
    return ModelConfig(
        family="gpt2",
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf.get("n_inner") or 4 * hidden),
        num_layers=int(hf["n_layer"]),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=int(hf["n_positions"]),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        attention_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        hidden_act=act,
        num_labels=_num_labels(hf),
        pad_token_id=hf.get("pad_token_id"),
        eos_token_id=_eos(hf),
        bos_token_id=hf.get("bos_token_id"),
        scale_attn_weights=bool(hf.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
    )


def rope_inv_freq(cfg: ModelConfig):
    """Rotary inverse frequencies ``[Dh/2]`` (float64 numpy), Hugging Face's formulas."""
    import numpy as np

    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv = inv.astype(np.float32)
    if cfg.rope_type == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor, lo, hi = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old = cfg.rope_original_max_position
        low_wl, high_wl = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv
