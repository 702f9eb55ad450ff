"""The decoder family's Hugging Face facts: checkpoint key table, config in/out, partition rules.

Covers ``model_type`` llama, qwen2, qwen3 and mistral (``*ForCausalLM`` and
``*ForSequenceClassification``). Kernels are stored ``[in, out]`` here and torch Linear weights
``[out, in]`` in the checkpoint, hence ``transpose=True`` on every projection row.
"""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from nabla_jax.models.config import (
    ModelConfig,
    UnsupportedModelError,
    common_from_hf,
    common_to_hf,
)
from nabla_jax.models.family import MODEL_AXIS, PartitionRules, head_partition_rules
from nabla_jax.models.keys import KeyRow, KeyTable

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURE_PREFIX",
    "DECODER_KEYS",
    "EMBEDDING",
    "LAYER_STACK",
    "MODEL_TYPES",
    "decoder_from_hf_config",
    "decoder_parallel_dims",
    "decoder_partition_rules",
    "decoder_to_hf_config",
]

ARCHITECTURE_PREFIX = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}
MODEL_TYPES = tuple(ARCHITECTURE_PREFIX)
ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")
EMBEDDING = "embed_tokens"
LAYER_STACK = "layers"

_LAYER = "model.layers.{layer}"


def _linear_rows(hf_module: str, path: str) -> tuple[KeyRow, ...]:
    """Weight (transposed into a kernel) and bias rows of one torch Linear."""
    return (
        KeyRow(f"{_LAYER}.{hf_module}.weight", f"{path}/kernel", transpose=True),
        KeyRow(f"{_LAYER}.{hf_module}.bias", f"{path}/bias"),
    )


DECODER_KEYS = KeyTable(
    rows=(
        KeyRow("model.embed_tokens.weight", EMBEDDING),
        KeyRow(f"{_LAYER}.input_layernorm.weight", "layers/input_layernorm/scale"),
        KeyRow(
            f"{_LAYER}.post_attention_layernorm.weight", "layers/post_attention_layernorm/scale"
        ),
        *_linear_rows("self_attn.q_proj", "layers/self_attn/q_proj"),
        *_linear_rows("self_attn.k_proj", "layers/self_attn/k_proj"),
        *_linear_rows("self_attn.v_proj", "layers/self_attn/v_proj"),
        *_linear_rows("self_attn.o_proj", "layers/self_attn/o_proj"),
        KeyRow(f"{_LAYER}.self_attn.q_norm.weight", "layers/self_attn/q_norm/scale"),
        KeyRow(f"{_LAYER}.self_attn.k_norm.weight", "layers/self_attn/k_norm/scale"),
        *_linear_rows("mlp.gate_proj", "layers/mlp/gate_proj"),
        *_linear_rows("mlp.up_proj", "layers/mlp/up_proj"),
        *_linear_rows("mlp.down_proj", "layers/mlp/down_proj"),
        KeyRow("model.norm.weight", "norm/scale"),
        KeyRow("lm_head.weight", "lm_head", transpose=True),
        KeyRow("score.weight", "score", transpose=True),
    ),
    tied=(("lm_head.weight", "model.embed_tokens.weight"),),
    ignored=(f"{_LAYER}.self_attn.rotary_emb.inv_freq",),
)


# -- config in --------------------------------------------------------------------------------


def _rope_from_hf(hf: dict) -> dict:
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


def _window_from_hf(family: str, hf: dict, layers: int) -> tuple[int | None, tuple[str, ...]]:
    """(sliding window or None, per-layer attention types) as each family's HF code reads them."""
    sliding = hf.get("sliding_window")
    layer_types = tuple(hf.get("layer_types") or ())
    if family in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        sliding = None
    if family == "mistral" and sliding is not None and not layer_types:
        layer_types = ("sliding_attention",) * layers
    if sliding is None:
        return None, ()
    if not layer_types:
        # Qwen2-style: layers from max_window_layers on use the window.
        mwl = int(hf.get("max_window_layers", layers))
        layer_types = tuple(
            "sliding_attention" if i >= mwl else "full_attention" for i in range(layers)
        )
    return int(sliding), layer_types


def decoder_from_hf_config(hf: dict) -> ModelConfig:
    """``ModelConfig`` of a llama / qwen2 / qwen3 / mistral ``config.json`` dict."""
    family = hf["model_type"]
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    layers = int(hf["num_hidden_layers"])
    # Which projections carry a bias, per Hugging Face's modeling files.
    if family == "qwen2":
        attention_bias, o_bias = True, False
    elif family == "mistral":
        attention_bias = o_bias = False
    else:
        attention_bias = o_bias = bool(hf.get("attention_bias", False))
    sliding, layer_types = _window_from_hf(family, hf, layers)
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported")
    return ModelConfig(
        model_type=family,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        attention_bias=attention_bias,
        o_bias=o_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=family == "qwen3",
        sliding_window=sliding,
        layer_types=layer_types,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hidden_act=act,
        **common_from_hf(hf),
        **_rope_from_hf(hf),
    )


# -- config out -------------------------------------------------------------------------------


def _check_expressible(cfg: ModelConfig) -> None:
    """Refuse settings the family's HF config cannot express, rather than write another model."""
    f = cfg.model_type
    if f == "qwen2" and (cfg.o_bias or cfg.mlp_bias or not cfg.attention_bias):
        raise UnsupportedModelError("a qwen2 config needs q/k/v biases only (no o/mlp bias)")
    if f == "mistral" and (cfg.attention_bias or cfg.o_bias or cfg.mlp_bias):
        raise UnsupportedModelError("a mistral config cannot carry projection biases")
    if f in ("llama", "qwen3") and cfg.attention_bias != cfg.o_bias:
        raise UnsupportedModelError(
            f"{f} has one attention_bias switch for q/k/v/o; this config sets "
            f"attention_bias={cfg.attention_bias}, o_bias={cfg.o_bias}"
        )
    if cfg.qk_norm != (f == "qwen3"):
        raise UnsupportedModelError(f"{f} {'needs' if f == 'qwen3' else 'has no'} q/k norms")
    if f == "mistral" and cfg.layer_types and set(cfg.layer_types) != {"sliding_attention"}:
        raise UnsupportedModelError("mistral applies its sliding window to every layer")
    if f == "llama" and cfg.sliding_window is not None:
        raise UnsupportedModelError("llama has no sliding-window attention")


def _rope_to_hf(cfg: ModelConfig) -> dict:
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(
            low_freq_factor=cfg.rope_low_freq_factor,
            high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_max_position,
        )
    # v4 reads rope_theta / rope_scaling, v5 rope_parameters: write both.
    return {
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None if cfg.rope_type == "default" else dict(rope),
        "rope_parameters": rope,
    }


def decoder_to_hf_config(cfg: ModelConfig, head: str = "lm") -> dict:
    """The HF ``config.json`` dict of ``cfg`` (``*ForCausalLM``, or with head "score"
    ``*ForSequenceClassification``); the inverse of ``decoder_from_hf_config``."""
    _check_expressible(cfg)
    suffix = "ForCausalLM" if head == "lm" else "ForSequenceClassification"
    out = {
        "architectures": [ARCHITECTURE_PREFIX[cfg.model_type] + suffix],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": cfg.hidden_act,
        **_rope_to_hf(cfg),
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        **common_to_hf(cfg),
    }
    if cfg.model_type in ("llama", "qwen3"):
        out["attention_bias"] = cfg.attention_bias
    if cfg.model_type == "llama":
        out["mlp_bias"] = cfg.mlp_bias
        out["pretraining_tp"] = 1
    if cfg.model_type in ("qwen2", "qwen3"):
        out["use_sliding_window"] = cfg.sliding_window is not None
        out["sliding_window"] = cfg.sliding_window
        out["max_window_layers"] = cfg.num_layers
        if cfg.layer_types:
            out["layer_types"] = list(cfg.layer_types)
    elif cfg.model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    return out


# -- partition rules --------------------------------------------------------------------------


def decoder_parallel_dims(cfg: ModelConfig) -> dict[str, int]:
    """Sizes the model axis splits (query heads, MLP width), so it must divide them."""
    return {"num_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size}


def decoder_partition_rules(cfg: ModelConfig, m: int) -> PartitionRules:
    """Megatron-style tensor parallelism over ``m`` devices (leaves ``[L, …]``, kernels
    ``[in, out]``): q/k/v and gate/up split on their output axis, o/down on their input axis;
    k/v replicated when the kv heads do not divide; biases of input-split kernels and every norm
    replicated."""
    col, col_bias, row, rep = (
        P(None, None, MODEL_AXIS),
        P(None, MODEL_AXIS),
        P(None, MODEL_AXIS, None),
        P(),
    )
    kv = cfg.num_kv_heads % m == 0
    return (
        *head_partition_rules(cfg, m, EMBEDDING),
        ("norm/scale", rep),
        ("layers/(input|post_attention)_layernorm/scale", rep),
        ("layers/self_attn/q_proj/kernel", col),
        ("layers/self_attn/q_proj/bias", col_bias),
        ("layers/self_attn/[kv]_proj/kernel", col if kv else rep),
        ("layers/self_attn/[kv]_proj/bias", col_bias if kv else rep),
        ("layers/self_attn/o_proj/kernel", row),
        ("layers/self_attn/o_proj/bias", rep),
        ("layers/self_attn/[qk]_norm/scale", rep),
        ("layers/mlp/(gate|up)_proj/kernel", col),
        ("layers/mlp/(gate|up)_proj/bias", col_bias),
        ("layers/mlp/down_proj/kernel", row),
        ("layers/mlp/down_proj/bias", rep),
    )
