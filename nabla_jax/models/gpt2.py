"""GPT-2: learned positions, LayerNorm, fused qkv projection (Hugging Face ``Conv1D`` layout).

Same calling convention as ``decoder.DecoderTransformer`` (embeddings in, hidden states and KV cache
out), so everything above the model is family-agnostic.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from nabla_jax.models.config import ModelConfig
from nabla_jax.models.layers import (
    KVCache,
    LayerNorm,
    activation,
    attention_allowed,
    dot_product_attention,
    layer_unroll,
    write_cache,
)

_init = nn.initializers.normal(0.02)


def _dense(features, dtype, name):
    return nn.Dense(features, dtype=dtype, param_dtype=dtype, kernel_init=_init, name=name)


class GPT2Attention(nn.Module):
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


class GPT2Transformer(nn.Module):
    """Token and position embeddings, stacked blocks, final LayerNorm and one head."""

    cfg: ModelConfig
    dtype: jnp.dtype = jnp.float32
    head: str = "lm"

    def setup(self):
        c = self.cfg
        self.wte = self.param("wte", _init, (c.vocab_size, c.hidden_size), self.dtype)
        self.wpe = self.param("wpe", _init, (c.max_position_embeddings, c.hidden_size), self.dtype)
        block = nn.scan(
            GPT2Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast),
            length=c.num_layers,
            unroll=layer_unroll(c.num_layers),
        )
        self.h = block(c, self.dtype, name="h")
        self.ln_f = LayerNorm(c.norm_eps, self.dtype, name="ln_f")
        if self.head == "lm" and not c.tie_word_embeddings:
            self.lm_head = self.param("lm_head", _init, (c.hidden_size, c.vocab_size), self.dtype)
        if self.head == "score":
            self.score = self.param("score", _init, (c.hidden_size, c.num_labels), self.dtype)

    def embed(self, input_ids):
        return jnp.take(self.wte, input_ids, axis=0)

    def embed_matrix(self):
        return self.wte

    def __call__(self, inputs_embeds, positions, key_mask, cache: KVCache | None, write_index):
        """Same contract as ``DecoderTransformer.__call__``; positions index the learned table."""
        x = inputs_embeds.astype(self.dtype) + jnp.take(self.wpe, positions, axis=0)
        kv = (cache.k, cache.v) if cache is not None else (None, None)
        layer_index = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
        x, (k, v) = self.h(x, (*kv, layer_index), (key_mask, write_index))
        x = self.ln_f(x)
        return x, (KVCache(k, v) if cache is not None else None)

    def head_matrix(self):
        if self.cfg.tie_word_embeddings:
            return self.wte
        return self.lm_head.T

    def lm_logits(self, hidden):
        w = self.head_matrix()
        return jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)

    def score_logits(self, hidden):
        return jnp.einsum("...d,dc->...c", hidden, self.score, preferred_element_type=jnp.float32)

    def init_all(self, input_ids):
        b, t = input_ids.shape
        h, _ = self(
            self.embed(input_ids),
            jnp.broadcast_to(jnp.arange(t), (b, t)),
            jnp.ones((b, t), jnp.int32),
            None,
            0,
        )
        return self.lm_logits(h) if self.head == "lm" else self.score_logits(h)
