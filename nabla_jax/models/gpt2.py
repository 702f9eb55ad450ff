"""The GPT-2 family in one place: Flax module, checkpoint key table, config in/out, partition rules.

GPT-2 has learned positions, LayerNorm and a fused qkv projection in Hugging Face's ``Conv1D``
layout (weights stored ``[in, out]``: no transpose). The module has the same calling convention as
``decoder.DecoderTransformer`` (embeddings in, hidden states and KV cache out), so everything
above the model is family-agnostic.

Partition rules: GPT-2's fused ``c_attn`` output axis is ``[q | k | v]`` concatenated; splitting
it over "model" would hand a device the end of q and the start of k, so heads would not line up
with ``c_proj``'s split. ``c_attn`` is split on its *input* axis instead (row parallelism): each
device holds ``1/m`` of the kernel, the fused output stays whole, and the cost is one all-reduce
of ``[B, T, 3D]`` per layer (attention itself then runs replicated). A column split aligned to
heads would need the kernel stored as ``[L, D, 3, H, Dh]``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from nabla_jax.models.config import (
    ModelConfig,
    UnsupportedModelError,
    common_from_hf,
    common_to_hf,
)
from nabla_jax.models.family import MODEL_AXIS, ModelFamily, PartitionRules, head_partition_rules
from nabla_jax.models.keys import KeyRow, KeyTable
from nabla_jax.models.layers import (
    INIT,
    KVCache,
    LayerNorm,
    TransformerBase,
    activation,
    attention_allowed,
    dot_product_attention,
    scan_layers,
    write_cache,
)

__all__ = [
    "FAMILY",
    "GPT2_KEYS",
    "GPT2Attention",
    "GPT2Block",
    "GPT2Transformer",
    "gpt2_from_hf_config",
    "gpt2_parallel_dims",
    "gpt2_partition_rules",
    "gpt2_to_hf_config",
]

ACTIVATIONS = ("gelu_new", "gelu", "relu", "gelu_pytorch_tanh")


def _dense(features, dtype, name):
    return nn.Dense(features, dtype=dtype, param_dtype=dtype, kernel_init=INIT, name=name)


class GPT2Attention(nn.Module):
    """Multi-head attention with the fused ``c_attn`` projection ``[D, 3D]``."""

    cfg: ModelConfig
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, k_buf, v_buf, write_index, allowed, scale):
        c = self.cfg
        b, t, d = x.shape
        qkv = _dense(3 * d, self.dtype, "c_attn")(x)
        q, k, v = (a.reshape(b, t, c.num_heads, c.head_dim) for a in jnp.split(qkv, 3, axis=-1))
        if k_buf is not None:
            k = write_cache(k_buf, k, write_index)
            v = write_cache(v_buf, v, write_index)
        out = dot_product_attention(q, k, v, allowed, scale)
        return _dense(d, self.dtype, "c_proj")(out.reshape(b, t, d)), k, v


class GPT2Block(nn.Module):
    """Pre-LayerNorm block; called by ``nn.scan`` with the hidden state as carry."""

    cfg: ModelConfig
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, layer_inputs, shared):
        k_buf, v_buf, layer_index = layer_inputs
        key_mask, write_index = shared
        c = self.cfg
        scale = c.head_dim**-0.5 if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale = scale / (layer_index + 1).astype(jnp.float32)
        allowed = attention_allowed(key_mask, write_index, x.shape[1])
        h = LayerNorm(c.norm_eps, self.dtype, name="ln_1")(x)
        a, k, v = GPT2Attention(c, self.dtype, name="attn")(
            h, k_buf, v_buf, write_index, allowed, scale
        )
        x = x + a
        h = LayerNorm(c.norm_eps, self.dtype, name="ln_2")(x)
        h = _dense(c.intermediate_size, self.dtype, "c_fc")(h)
        x = x + _dense(c.hidden_size, self.dtype, "c_proj")(activation(c.hidden_act)(h))
        return x, (k, v)


class GPT2Transformer(TransformerBase):
    """Token and position embeddings, stacked blocks, final LayerNorm and one head."""

    def setup(self):
        c = self.cfg
        self.wte = self.param("wte", INIT, (c.vocab_size, c.hidden_size), self.dtype)
        self.wpe = self.param("wpe", INIT, (c.max_position_embeddings, c.hidden_size), self.dtype)
        self.h = scan_layers(GPT2Block, c, self.dtype, "h")
        self.ln_f = LayerNorm(c.norm_eps, self.dtype, name="ln_f")
        self.declare_head()

    def __call__(self, inputs_embeds, positions, key_mask, cache: KVCache | None, write_index):
        """Same contract as ``DecoderTransformer.__call__``; positions index the learned table."""
        x = inputs_embeds.astype(self.dtype) + jnp.take(self.wpe, positions, axis=0)
        kv = (cache.k, cache.v) if cache is not None else (None, None)
        layer_index = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
        x, (k, v) = self.h(x, (*kv, layer_index), (key_mask, write_index))
        x = self.ln_f(x)
        return x, (KVCache(k, v) if cache is not None else None)


# -- checkpoint key table -------------------------------------------------------------------

_H = "transformer.h.{layer}"


def _rows(hf_module: str, path: str, kinds=(("weight", "kernel"), ("bias", "bias"))):
    return tuple(KeyRow(f"{hf_module}.{w}", f"{path}/{ours}") for w, ours in kinds)


_NORM = (("weight", "scale"), ("bias", "bias"))
GPT2_KEYS = KeyTable(
    rows=(
        KeyRow("transformer.wte.weight", "wte"),
        KeyRow("transformer.wpe.weight", "wpe"),
        *_rows(f"{_H}.ln_1", "h/ln_1", _NORM),
        *_rows(f"{_H}.ln_2", "h/ln_2", _NORM),
        *_rows(f"{_H}.attn.c_attn", "h/attn/c_attn"),
        *_rows(f"{_H}.attn.c_proj", "h/attn/c_proj"),
        *_rows(f"{_H}.mlp.c_fc", "h/c_fc"),
        *_rows(f"{_H}.mlp.c_proj", "h/c_proj"),
        *_rows("transformer.ln_f", "ln_f", _NORM),
        KeyRow("lm_head.weight", "lm_head", transpose=True),
        KeyRow("score.weight", "score", transpose=True),
    ),
    tied=(("lm_head.weight", "transformer.wte.weight"),),
    # Causal-mask buffers of old GPT-2 checkpoints: not parameters.
    ignored=(f"{_H}.attn.bias", f"{_H}.attn.masked_bias"),
)


# -- config in and out ----------------------------------------------------------------------


def gpt2_from_hf_config(hf: dict) -> ModelConfig:
    """``ModelConfig`` of a GPT-2 ``config.json`` dict."""
    hidden = int(hf["n_embd"])
    heads = int(hf["n_head"])
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(f"GPT-2 activation_function {act!r} is not supported")
    if hf.get("reorder_and_upcast_attn", False):
        raise UnsupportedModelError("GPT-2 reorder_and_upcast_attn=True is not supported")
    return ModelConfig(
        model_type="gpt2",
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
        scale_attn_weights=bool(hf.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        **common_from_hf(hf),
    )


def gpt2_to_hf_config(cfg: ModelConfig, head: str = "lm") -> dict:
    """The HF ``config.json`` dict of ``cfg`` (``GPT2LMHeadModel``, or with head "score"
    ``GPT2ForSequenceClassification``); the inverse of ``gpt2_from_hf_config``."""
    c = cfg
    fixed = c.num_kv_heads == c.num_heads and c.head_dim * c.num_heads == c.hidden_size
    biases = c.attention_bias and c.o_bias and c.mlp_bias
    extras = c.qk_norm or c.sliding_window is not None or c.layer_types or c.rope_type != "default"
    if not fixed or not biases or extras or c.hidden_act not in ACTIVATIONS:
        raise UnsupportedModelError(
            "a gpt2 config has full multi-head attention with head_dim = hidden / heads, biases "
            "on every projection, learned positions and no q/k norm or sliding window; this "
            "config differs, so it cannot be written as gpt2"
        )
    return {
        "architectures": ["GPT2LMHeadModel" if head == "lm" else "GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_embd": c.hidden_size,
        "n_layer": c.num_layers,
        "n_head": c.num_heads,
        "n_inner": c.intermediate_size,
        "n_positions": c.max_position_embeddings,
        "activation_function": c.hidden_act,
        "layer_norm_epsilon": c.norm_eps,
        "scale_attn_weights": c.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": False,
        "initializer_range": 0.02,
        "use_cache": True,
        **common_to_hf(c),
    }


# -- partition rules ------------------------------------------------------------------------


def gpt2_parallel_dims(cfg: ModelConfig) -> dict[str, int]:
    """Sizes the model axis splits: heads (``c_proj``), MLP width, and the hidden size
    (``c_attn``'s input axis)."""
    return {
        "num_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_size": cfg.hidden_size,
    }


def gpt2_partition_rules(cfg: ModelConfig, m: int) -> PartitionRules:
    """``c_attn``, attention ``c_proj`` and MLP ``c_proj`` split on their input axis, ``c_fc`` on
    its output axis (with its bias); positions, LayerNorms and the other biases replicated."""
    row, rep = P(None, MODEL_AXIS, None), P()
    return (
        *head_partition_rules(cfg, m, "wte"),
        ("wpe", rep),
        ("(h/ln_[12]|ln_f)/(scale|bias)", rep),
        ("h/attn/(c_attn|c_proj)/kernel", row),
        ("h/attn/(c_attn|c_proj)/bias", rep),
        ("h/c_fc/kernel", P(None, None, MODEL_AXIS)),
        ("h/c_fc/bias", P(None, MODEL_AXIS)),
        ("h/c_proj/kernel", row),
        ("h/c_proj/bias", rep),
    )


FAMILY = ModelFamily(
    name="gpt2",
    model_types=("gpt2",),
    module=GPT2Transformer,
    keys=GPT2_KEYS,
    embedding="wte",
    layer_stack="h",
    from_hf_config=gpt2_from_hf_config,
    to_hf_config=gpt2_to_hf_config,
    partition_rules=gpt2_partition_rules,
    parallel_dims=gpt2_parallel_dims,
)
