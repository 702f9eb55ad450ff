"""Blocks shared by the model families: norms, rotary embedding, masked attention, KV cache,
the layer stack, and the embedding and output heads (pure functions of the parameter arrays).

Conventions follow Hugging Face so that checkpoints need no surgery: half-split rotary embedding
with sin/cos computed in float32, unscaled query projections (the 1/sqrt(Dh) scale is applied to the
scores), softmax in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "INIT",
    "HEADS",
    "KVCache",
    "NO_HEAD",
    "LayerNorm",
    "RMSNorm",
    "TransformerBase",
    "activation",
    "apply_rotary",
    "attention_allowed",
    "dot_product_attention",
    "embed_tokens",
    "init_kv_cache",
    "layer_unroll",
    "lm_logits",
    "output_matrix",
    "rotary_cos_sin",
    "scan_layers",
    "score_logits",
    "write_cache",
]

# Initializer of every matrix (embeddings, kernels, heads): normal with std 0.02.
INIT = nn.initializers.normal(0.02)
HEADS = ("lm", "score")
#: The head value of a module without a head parameter: the backbone that process-reward heads
#: (``models/prm.py``) sit on.
NO_HEAD = "none"
# Large negative used instead of -inf so a fully masked row (a padding query) stays finite.
_MASK_VALUE = -1e30


class KVCache(NamedTuple):
    """Keys and values of every layer, in fixed-size slot buffers.

    Attributes:
      k: ``[L, B, S, Hkv, Dh]`` keys (rotary already applied).
      v: ``[L, B, S, Hkv, Dh]`` values.
    A step that processes ``T`` new tokens writes slots ``write_index … write_index+T-1``
    (``write_index`` a scalar, or ``[B]``: one start slot per row).
    """

    k: jax.Array
    v: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_kv_cache(num_layers, batch, max_len, num_kv_heads, head_dim, dtype) -> KVCache:
    """Zeroed buffers ``[L, B, S, Hkv, Dh]`` for keys and values."""
    shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * scale``, computed in float32 then cast back (HF semantics)."""

    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return scale * h.astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with scale and bias, statistics in float32 (GPT-2)."""

    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (d,), self.dtype)
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rotary_cos_sin(positions, inv_freq: np.ndarray):
    """cos, sin of shape ``[B, T, Dh]`` (float32) for integer ``positions [B, T]``."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x, cos, sin):
    """Half-split rotary embedding of ``x [B, T, H, Dh]`` with ``cos, sin [B, T, Dh]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def attention_allowed(key_mask, write_index, num_new: int, window=None):
    """Boolean ``[B, T, S]``: may new token ``t`` (in slot ``write_index+t``) attend slot ``s``.

    Args:
      key_mask: ``[B, S]`` 1 where the slot holds a real token (padding and empty slots are 0).
      write_index: slot of the first new token: an int or scalar array (every row), or ``[B]``
        (one slot per row).
      num_new: ``T``, the number of new tokens.
      window: sliding-window size (scalar; None or ≤0: no window). Matches HF: slot ``s`` is
        visible from slot ``q`` when ``0 <= q - s < window``.
    """
    s = jnp.arange(key_mask.shape[1])[None, None, :]
    start = jnp.reshape(jnp.asarray(write_index), (-1, 1, 1))  # [1 | B, 1, 1]
    q = start + jnp.arange(num_new)[None, :, None]
    allowed = s <= q
    if window is not None:
        allowed = allowed & ((window <= 0) | (q - s < window))
    return allowed & (key_mask[:, None, :] > 0)


def dot_product_attention(q, k, v, allowed, scale: float):
    """Grouped-query attention.

    Args:
      q: ``[B, T, H, Dh]``; k, v: ``[B, S, Hkv, Dh]`` with ``H % Hkv == 0``.
      allowed: ``[B, T, S]`` boolean mask.
      scale: multiplier of the scores.
    Returns:
      ``[B, T, H, Dh]`` in q's dtype; scores and softmax in float32.
    """
    b, t, h, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, t, hkv, h // hkv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(allowed[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def write_cache(buffer, new, write_index):
    """Write ``new [B, T, Hkv, Dh]`` into ``buffer [B, S, Hkv, Dh]`` at slot ``write_index``
    (scalar: the same slot for every row; ``[B]``: row ``b`` at its own slot)."""
    new = new.astype(buffer.dtype)
    write_index = jnp.asarray(write_index)
    if write_index.ndim == 0:
        return jax.lax.dynamic_update_slice(buffer, new, (0, write_index, 0, 0))
    row = lambda buf, x, i: jax.lax.dynamic_update_slice(buf, x, (i, 0, 0))
    return jax.vmap(row)(buffer, new, write_index)


def activation(name: str):
    """The elementwise activation called ``name`` in Hugging Face configs."""
    if name == "silu":
        return jax.nn.silu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unknown activation {name!r}")


def layer_unroll(num_layers: int) -> int:
    """Unroll shallow stacks fully (XLA fuses across layers); scan deep ones (compile time)."""
    return num_layers if num_layers <= 8 else 1


def scan_layers(block: type, cfg, dtype, name: str):
    """``block`` repeated ``cfg.num_layers`` times by ``nn.scan``: parameters stacked on axis 0,
    the hidden state as carry; per-layer inputs on axis 0, shared inputs broadcast."""
    scanned = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast),
        length=cfg.num_layers,
        unroll=layer_unroll(cfg.num_layers),
    )
    return scanned(cfg, dtype, name=name)


class TransformerBase(nn.Module):
    """Fields every family's Flax module has, and the head parameters they all declare.

    Attributes:
      cfg: the architecture (``ModelConfig``).
      dtype: parameter and activation dtype (float32 or bfloat16).
      head: "lm" (causal-LM head: ``lm_head [D, V]`` unless tied to the embedding), "score"
        (sequence-classification head ``score [D, C]``) or ``NO_HEAD`` (no head parameter).
    The heads are applied outside Flax by ``lm_logits`` / ``score_logits`` on the parameters.
    """

    cfg: Any
    dtype: Any = jnp.float32
    head: str = "lm"

    def declare_head(self):
        """Create the head parameter; called last in a family's ``setup``."""
        c = self.cfg
        if self.head not in HEADS + (NO_HEAD,):
            raise ValueError(f"head must be one of {HEADS + (NO_HEAD,)}, got {self.head!r}")
        if self.head == "lm" and not c.tie_word_embeddings:
            self.param("lm_head", INIT, (c.hidden_size, c.vocab_size), self.dtype)
        if self.head == "score":
            self.param("score", INIT, (c.hidden_size, c.num_labels), self.dtype)


def embed_tokens(table, input_ids):
    """``[B, T]`` ids → ``[B, T, D]`` rows of the embedding ``table [V, D]`` (a gather)."""
    return jnp.take(table, input_ids, axis=0)


def output_matrix(embedding, lm_head=None):
    """``[V, D]`` output projection: the embedding itself when tied (``lm_head`` None), else the
    LM head kernel ``[D, V]`` transposed."""
    return embedding if lm_head is None else lm_head.T


def lm_logits(hidden, matrix):
    """``hidden [..., D]`` times the output projection ``[V, D]`` → float32 ``[..., V]``."""
    return jnp.einsum("...d,vd->...v", hidden, matrix, preferred_element_type=jnp.float32)


def score_logits(hidden, score):
    """``hidden [..., D]`` times the score head ``[D, C]`` → float32 ``[..., C]``."""
    return jnp.einsum("...d,dc->...c", hidden, score, preferred_element_type=jnp.float32)
