"""``CausalLM`` and ``RewardModel``: weights plus the functions users call on them.

Both are JAX pytrees whose only leaves are the parameters (config and tokenizer are static), so
they pass straight through ``jax.jit`` / ``vmap`` as arguments: one compiled program serves every
checkpoint of the same shape, and no weight is baked into HLO as a constant.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.models.config import ModelConfig
from nabla_jax.models.family import ModelFamily
from nabla_jax.models.layers import (
    NO_HEAD,
    KVCache,
    embed_tokens,
    init_kv_cache,
    lm_logits,
    output_matrix,
    score_logits,
)
from nabla_jax.models.registry import config_from_hf, family_of

__all__ = [
    "DTYPES",
    "Backbone",
    "CausalLM",
    "ModelOutput",
    "RewardModel",
    "build_module",
    "default_positions",
    "init_causal_lm",
    "init_params",
    "init_reward_model",
    "last_valid_index",
    "param_shapes",
    "resolve_dtype",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(dtype) -> str:
    """Canonical dtype name; only float32 and bfloat16 are supported."""
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: use 'float32' or 'bfloat16'")
    return name


def build_module(cfg: ModelConfig, dtype: str, head: str):
    """The Flax module of ``cfg``'s family with the given head ("lm" or "score")."""
    return family_of(cfg).module(cfg, DTYPES[dtype], head)


class ModelOutput(NamedTuple):
    """hidden: final-norm hidden states ``[B, T, D]``; cache: updated KV cache or None."""

    hidden: jax.Array
    cache: KVCache | None


class _Static:
    """Holds a non-array (the tokenizer) in pytree aux data with identity semantics."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Static) and other.value is self.value

    def __hash__(self):
        return id(self.value)

    def __repr__(self):  # stable across processes (no address): part of program keys
        return f"_Static({type(self.value).__name__})"


def default_positions(attention_mask):
    """HF generate's position ids: ``max(cumsum(mask) - 1, 0)``; ``[B, T]`` int32."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def last_valid_index(mask):
    """Index of the rightmost 1 of each row of ``mask [B, T]`` (0 when a row is empty)."""
    t = mask.shape[-1]
    idx = jnp.arange(t, dtype=jnp.int32)
    return jnp.max(jnp.where(mask > 0, idx, 0), axis=-1)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class _Model:
    head = "lm"

    def __init__(self, config: ModelConfig, params: dict, tokenizer: Any = None, dtype="float32"):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.dtype = resolve_dtype(dtype)

    # -- pytree protocol ----------------------------------------------------------------------
    def tree_flatten(self):
        return (self.params,), (self.config, _Static(self.tokenizer), self.dtype)

    @classmethod
    def tree_unflatten(cls, aux, children):
        config, tok, dtype = aux
        return cls(config, children[0], tok.value, dtype)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        jax.tree_util.register_pytree_node_class(cls)

    def __repr__(self):
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
        return (
            f"{type(self).__name__}(model_type={self.config.model_type}, "
            f"layers={self.config.num_layers}, "
            f"hidden={self.config.hidden_size}, vocab={self.config.vocab_size}, params={n:,}, "
            f"dtype={self.dtype})"
        )

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def family(self) -> ModelFamily:
        """The model family (module, key table, partition rules) of this model's config."""
        return family_of(self.config)

    @property
    def module(self):
        """The Flax module; ``module.apply({"params": params}, inputs_embeds, …)`` runs the
        blocks (see ``forward``)."""
        return build_module(self.config, self.dtype, self.head)

    def embed_matrix(self):
        """``[V, D]`` input embedding table."""
        return self.params[self.family.embedding]

    def embed(self, input_ids):
        """``[B, T]`` ids → ``[B, T, D]``."""
        return embed_tokens(self.embed_matrix(), input_ids)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """Empty KV buffers for ``batch`` rows of ``max_len`` slots.

        Slots are storage, not positions: padding may make a buffer longer than the model's
        positions; what must fit are the position ids (checked in ``forward``).
        """
        c = self.config
        return init_kv_cache(
            c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim, DTYPES[self.dtype]
        )

    def _prepare(self, input_ids, inputs_embeds, attention_mask, position_ids):
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, D]")
        if input_ids is not None:
            input_ids = jnp.asarray(input_ids)
            if input_ids.ndim != 2:
                raise ValueError(
                    f"input_ids must be [B, T], got shape {input_ids.shape}; add a batch axis"
                )
            if _is_concrete(input_ids) and input_ids.size:
                lo, hi = int(input_ids.min()), int(input_ids.max())
                if lo < 0 or hi >= c.vocab_size:
                    raise ValueError(
                        f"input_ids hold ids in [{lo}, {hi}] outside the embedding table of "
                        f"{c.vocab_size} rows; check the tokenizer matches this model"
                    )
            b, t = input_ids.shape
        else:
            inputs_embeds = jnp.asarray(inputs_embeds)
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != c.hidden_size:
                raise ValueError(
                    f"inputs_embeds must be [B, T, {c.hidden_size}], got shape "
                    f"{inputs_embeds.shape}"
                )
            b, t = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        attention_mask = jnp.asarray(attention_mask)
        if attention_mask.shape != (b, t):
            raise ValueError(
                f"attention_mask must have shape {(b, t)} like the inputs, "
                f"got {attention_mask.shape}"
            )
        if position_ids is None:
            position_ids = default_positions(attention_mask)
        position_ids = jnp.asarray(position_ids, jnp.int32)
        if position_ids.shape != (b, t):
            raise ValueError(f"position_ids must have shape {(b, t)}, got {position_ids.shape}")
        if _is_concrete(position_ids) and position_ids.size:
            top = int(np.max(np.asarray(position_ids)))  # concrete: read on the host
            if top >= c.max_position_embeddings:
                raise ValueError(
                    f"position {top} exceeds the model's {c.max_position_embeddings} positions; "
                    "shorten the prompt or max_length"
                )
        return input_ids, inputs_embeds, attention_mask, position_ids

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        *,
        inputs_embeds=None,
        position_ids=None,
        cache: KVCache | None = None,
        write_index=0,
        key_mask=None,
    ) -> ModelOutput:
        """Hidden states of new tokens, optionally reading and writing a KV cache.

        Args:
          input_ids: ``[B, T]`` int ids, or ``inputs_embeds``: ``[B, T, D]``.
          attention_mask: ``[B, T]`` 1 for real tokens (left or right padding).
          position_ids: ``[B, T]``; default ``max(cumsum(mask)-1, 0)``, as HF ``generate``.
          cache: KV buffers from ``init_cache`` / an earlier call, or None.
          write_index: cache slot of the first new token: a scalar, or ``[B]`` (per row).
          key_mask: ``[B, S]`` valid slots of the cache after this call's writes (required with
            a cache; without one it is ``attention_mask``).
        """
        ids, embeds, mask, positions = self._prepare(
            input_ids, inputs_embeds, attention_mask, position_ids
        )
        b, t = mask.shape
        # Slots are storage: padding may make a sequence longer than the model's positions;
        # what must fit are the positions themselves (checked in _prepare when concrete).
        if cache is None:
            key_mask = mask
        elif key_mask is None:
            raise ValueError("forward with a cache needs key_mask [B, S] over the cache slots")
        elif tuple(key_mask.shape) != (b, cache.max_len):
            raise ValueError(
                f"key_mask must be [B, S] = {(b, cache.max_len)}, got {tuple(key_mask.shape)}"
            )
        return _forward(self, ids, embeds, positions, key_mask, cache, write_index)

    def hidden_states(
        self, input_ids=None, attention_mask=None, *, inputs_embeds=None, position_ids=None
    ):
        """Last-layer (final-norm) hidden states ``[B, T, D]``."""
        return self.forward(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, position_ids=position_ids
        ).hidden


class CausalLM(_Model):
    """A causal LM: ``logits``, ``hidden_states``, ``head_logits``, KV-cached ``forward``."""

    head = "lm"

    def logits(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, position_ids=None):
        """Next-token logits ``[B, T, V]`` (float32)."""
        hidden = self.hidden_states(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, position_ids=position_ids
        )
        return _head_logits(self, hidden)

    def head_logits(self, hidden):
        """Apply the LM head: ``[..., D]`` → float32 ``[..., V]`` (latents mode)."""
        return lm_logits(hidden, self.head_matrix())

    def head_matrix(self):
        """``[V, D]`` output projection; the embedding table itself when tied."""
        tied = self.config.tie_word_embeddings
        return output_matrix(self.embed_matrix(), None if tied else self.params["lm_head"])


class RewardModel(_Model):
    """A sequence-classification model read at the last real token (HF semantics)."""

    head = "score"

    def score(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, position_ids=None):
        """Score at the rightmost real token of each row: ``[B]`` (``[B, C]`` if num_labels > 1).

        The "real" positions are those of ``attention_mask``; without one, input ids equal to
        ``config.pad_token_id`` are skipped as Hugging Face does; with neither, the last position.
        """
        hidden = self.hidden_states(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, position_ids=position_ids
        )
        b, t = hidden.shape[:2]
        if attention_mask is not None:
            index = last_valid_index(jnp.asarray(attention_mask))
        elif input_ids is not None and self.config.pad_token_id is not None:
            index = last_valid_index(jnp.asarray(input_ids) != self.config.pad_token_id)
        else:
            index = jnp.full((b,), t - 1, jnp.int32)
        return _pooled_score(self, hidden, index)

    def score_hidden(self, hidden):
        """Score head on pooled hidden states ``[..., D]`` → ``[...]`` (or ``[..., C]``)."""
        out = score_logits(hidden, self.params["score"])
        return out[..., 0] if self.config.num_labels == 1 else out


class Backbone(_Model):
    """The transformer without a head: ``hidden_states`` / ``forward`` only. Process reward
    models (``models/prm.py``) put their own heads on it."""

    head = NO_HEAD


@jax.jit
def _forward(model, ids, embeds, positions, key_mask, cache, write_index) -> ModelOutput:
    if embeds is None:
        embeds = model.embed(ids)
    hidden, cache = model.module.apply(
        {"params": model.params}, embeds, positions, key_mask, cache, write_index
    )
    return ModelOutput(hidden, cache)


@jax.jit
def _head_logits(model, hidden):
    return model.head_logits(hidden)


@jax.jit
def _pooled_score(model, hidden, index):
    pooled = jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]
    return model.score_hidden(pooled)


def _init_fn(cfg: ModelConfig, dtype: str, head: str):
    """``key → params``: the module's init on a two-token dummy input (every parameter is
    declared in ``setup``, so one call creates them all)."""
    module = build_module(cfg, dtype, head)
    embeds = jnp.zeros((1, 2, cfg.hidden_size), DTYPES[dtype])
    positions = jnp.arange(2, dtype=jnp.int32)[None]
    mask = jnp.ones((1, 2), jnp.int32)
    return lambda key: module.init(key, embeds, positions, mask, None, 0)["params"]


def init_params(cfg: ModelConfig, key, dtype="float32", head="lm") -> dict:
    """Random parameters (normal(0.02) kernels, unit norms) for ``cfg``."""
    # Jitted: Flax's eager init dispatches op by op through nn.scan (seconds even for tiny models).
    return jax.jit(_init_fn(cfg, resolve_dtype(dtype), head))(key)


def param_shapes(cfg: ModelConfig, dtype="float32", head="lm") -> dict:
    """Shapes/dtypes of every parameter leaf, without allocating them."""
    return jax.eval_shape(_init_fn(cfg, resolve_dtype(dtype), head), jax.random.key(0))


def init_causal_lm(hf_config, key, dtype="float32", tokenizer=None) -> CausalLM:
    """A randomly initialised ``CausalLM`` from a Hugging Face config (dict, object or path)."""
    cfg = config_from_hf(hf_config)
    return CausalLM(cfg, init_params(cfg, key, dtype, "lm"), tokenizer, dtype)


def init_reward_model(hf_config, key, dtype="float32", tokenizer=None) -> RewardModel:
    """A randomly initialised ``RewardModel`` from a Hugging Face config."""
    cfg = config_from_hf(hf_config)
    return RewardModel(cfg, init_params(cfg, key, dtype, "score"), tokenizer, dtype)
