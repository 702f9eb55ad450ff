"""Decoder-only transformer: Llama, Qwen2, Qwen3 and Mistral through config switches.

Parameter names mirror Hugging Face's module names (``embed_tokens``, ``layers/self_attn/q_proj`` …)
so the checkpoint key map in ``convert.py`` stays declarative. Layers are stacked on a leading axis
(``nn.scan``): one compiled block serves every layer, and the KV cache is one ``[L, …]`` array.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from nabla_jax.models.config import ModelConfig, rope_inv_freq
from nabla_jax.models.layers import (
    KVCache,
    RMSNorm,
    activation,
    apply_rotary,
    attention_allowed,
    dot_product_attention,
    layer_unroll,
    rotary_cos_sin,
    write_cache,
)

_init = nn.initializers.normal(0.02)


def _dense(features, use_bias, dtype, name):
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=dtype, kernel_init=_init, name=name
    )


class DecoderAttention(nn.Module):
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


class DecoderTransformer(nn.Module):
    """Embedding, stacked blocks, final norm and one head.

    Attributes:
      cfg: the architecture.
      dtype: parameter and activation dtype (float32 or bfloat16).
      head: "lm" (causal-LM head, tied or untied) or "score" (sequence-classification head).
    """

    cfg: ModelConfig
    dtype: jnp.dtype = jnp.float32
    head: str = "lm"

    def setup(self):
        c = self.cfg
        self.embed_tokens = self.param(
            "embed_tokens", _init, (c.vocab_size, c.hidden_size), self.dtype
        )
        block = nn.scan(
            DecoderBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast),
            length=c.num_layers,
            unroll=layer_unroll(c.num_layers),
        )
        self.layers = block(c, self.dtype, name="layers")
        self.norm = RMSNorm(c.norm_eps, self.dtype, name="norm")
        if self.head == "lm" and not c.tie_word_embeddings:
            self.lm_head = self.param("lm_head", _init, (c.hidden_size, c.vocab_size), self.dtype)
        if self.head == "score":
            self.score = self.param("score", _init, (c.hidden_size, c.num_labels), self.dtype)

    def embed(self, input_ids):
        """``[B, T]`` ids → ``[B, T, D]`` embeddings (a gather)."""
        return jnp.take(self.embed_tokens, input_ids, axis=0)

    def embed_matrix(self):
        return self.embed_tokens

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

    def head_matrix(self):
        """``[V, D]`` output projection (the embedding itself when tied)."""
        if self.cfg.tie_word_embeddings:
            return self.embed_tokens
        return self.lm_head.T

    def lm_logits(self, hidden):
        """``[..., D]`` → float32 ``[..., V]``."""
        w = self.head_matrix()
        return jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)

    def score_logits(self, hidden):
        """``[..., D]`` → float32 ``[..., num_labels]``."""
        return jnp.einsum("...d,dc->...c", hidden, self.score, preferred_element_type=jnp.float32)

    def init_all(self, input_ids):
        """Touch every parameter (used by ``init``)."""
        b, t = input_ids.shape
        h, _ = self(
            self.embed(input_ids),
            jnp.broadcast_to(jnp.arange(t), (b, t)),
            jnp.ones((b, t), jnp.int32),
            None,
            0,
        )
        return self.lm_logits(h) if self.head == "lm" else self.score_logits(h)
