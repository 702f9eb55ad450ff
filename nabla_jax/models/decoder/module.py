"""Decoder-only transformer: Llama, Qwen2, Qwen3 and Mistral through config switches.

Parameter names mirror Hugging Face's module names (``embed_tokens``, ``layers/self_attn/q_proj`` …)
so the family's key table (``decoder/hf.py``) is one row per tensor. Layers are stacked on a
leading axis (``nn.scan``): one compiled block serves every layer, and the KV cache is one
``[L, …]`` array.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from nabla_jax.models.config import ModelConfig
from nabla_jax.models.layers import (
    INIT,
    KVCache,
    RMSNorm,
    TransformerBase,
    activation,
    apply_rotary,
    attention_allowed,
    dot_product_attention,
    rotary_cos_sin,
    scan_layers,
    write_cache,
)

__all__ = [
    "DecoderAttention",
    "DecoderBlock",
    "DecoderMLP",
    "DecoderTransformer",
    "rope_inv_freq",
]


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies ``[Dh/2]`` (float32 numpy), Hugging Face's formulas."""
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


def _dense(features, use_bias, dtype, name):
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=dtype, kernel_init=INIT, name=name
    )


class DecoderAttention(nn.Module):
    """Grouped-query attention with rotary positions (optional q/k norms, biases, window)."""

    cfg: ModelConfig
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, cos, sin, k_buf, v_buf, write_index, allowed):
        """x ``[B, T, D]`` → (out ``[B, T, D]``, keys, values ``[B, S, Hkv, Dh]``)."""
        c = self.cfg
        b, t, _ = x.shape
        q = _dense(c.num_heads * c.head_dim, c.attention_bias, self.dtype, "q_proj")(x)
        k = _dense(c.num_kv_heads * c.head_dim, c.attention_bias, self.dtype, "k_proj")(x)
        v = _dense(c.num_kv_heads * c.head_dim, c.attention_bias, self.dtype, "v_proj")(x)
        q = q.reshape(b, t, c.num_heads, c.head_dim)
        k = k.reshape(b, t, c.num_kv_heads, c.head_dim)
        v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q = RMSNorm(c.norm_eps, self.dtype, name="q_norm")(q)
            k = RMSNorm(c.norm_eps, self.dtype, name="k_norm")(k)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if k_buf is not None:
            k = write_cache(k_buf, k, write_index)
            v = write_cache(v_buf, v, write_index)
        out = dot_product_attention(q, k, v, allowed, c.head_dim**-0.5)
        out = _dense(c.hidden_size, c.o_bias, self.dtype, "o_proj")(
            out.reshape(b, t, c.num_heads * c.head_dim)
        )
        return out, k, v


class DecoderMLP(nn.Module):
    """Gated MLP: ``down(act(gate(x)) * up(x))``."""

    cfg: ModelConfig
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        gate = _dense(c.intermediate_size, c.mlp_bias, self.dtype, "gate_proj")(x)
        up = _dense(c.intermediate_size, c.mlp_bias, self.dtype, "up_proj")(x)
        return _dense(c.hidden_size, c.mlp_bias, self.dtype, "down_proj")(
            activation(c.hidden_act)(gate) * up
        )


class DecoderBlock(nn.Module):
    """Pre-norm block; called by ``nn.scan`` with the hidden state as carry."""

    cfg: ModelConfig
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, layer_inputs, shared):
        k_buf, v_buf, window = layer_inputs
        cos, sin, key_mask, write_index = shared
        c = self.cfg
        allowed = attention_allowed(
            key_mask, write_index, x.shape[1], window if c.sliding_window is not None else None
        )
        h = RMSNorm(c.norm_eps, self.dtype, name="input_layernorm")(x)
        a, k, v = DecoderAttention(c, self.dtype, name="self_attn")(
            h, cos, sin, k_buf, v_buf, write_index, allowed
        )
        x = x + a
        h = RMSNorm(c.norm_eps, self.dtype, name="post_attention_layernorm")(x)
        x = x + DecoderMLP(c, self.dtype, name="mlp")(h)
        return x, (k, v)


class DecoderTransformer(TransformerBase):
    """Embedding table, stacked blocks, final norm and one head (fields: ``TransformerBase``)."""

    def setup(self):
        c = self.cfg
        self.embed_tokens = self.param(
            "embed_tokens", INIT, (c.vocab_size, c.hidden_size), self.dtype
        )
        self.layers = scan_layers(DecoderBlock, c, self.dtype, "layers")
        self.norm = RMSNorm(c.norm_eps, self.dtype, name="norm")
        self.declare_head()

    def __call__(self, inputs_embeds, positions, key_mask, cache: KVCache | None, write_index):
        """Run the blocks.

        Args:
          inputs_embeds: ``[B, T, D]``.
          positions: ``[B, T]`` rotary positions.
          key_mask: ``[B, S]`` valid key slots (``S = T`` without a cache).
          cache: KV buffers ``[L, B, S, Hkv, Dh]`` or None.
          write_index: slot of the first new token in the cache.
        Returns:
          (final-norm hidden states ``[B, T, D]``, updated cache or None).
        """
        c = self.cfg
        cos, sin = rotary_cos_sin(positions, rope_inv_freq(c))
        windows = jnp.asarray(
            [c.layer_window(i) or 0 for i in range(c.num_layers)], dtype=jnp.int32
        )
        kv = (cache.k, cache.v) if cache is not None else (None, None)
        x, (k, v) = self.layers(
            inputs_embeds.astype(self.dtype), (*kv, windows), (cos, sin, key_mask, write_index)
        )
        x = self.norm(x)
        return x, (KVCache(k, v) if cache is not None else None)
