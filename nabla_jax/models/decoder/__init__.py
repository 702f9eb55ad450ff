"""The decoder family (Llama, Qwen2, Qwen3, Mistral): Flax module in ``module.py``, Hugging Face
facts (key table, config in/out, partition rules) in ``hf.py``, tied together as ``FAMILY``."""

from nabla_jax.models.decoder.hf import (
    DECODER_KEYS,
    EMBEDDING,
    LAYER_STACK,
    MODEL_TYPES,
    decoder_from_hf_config,
    decoder_parallel_dims,
    decoder_partition_rules,
    decoder_to_hf_config,
)
from nabla_jax.models.decoder.module import DecoderTransformer, rope_inv_freq
from nabla_jax.models.family import ModelFamily

__all__ = ["DECODER_KEYS", "FAMILY", "DecoderTransformer", "rope_inv_freq"]

FAMILY = ModelFamily(
    name="decoder",
    model_types=MODEL_TYPES,
    module=DecoderTransformer,
    keys=DECODER_KEYS,
    embedding=EMBEDDING,
    layer_stack=LAYER_STACK,
    from_hf_config=decoder_from_hf_config,
    to_hf_config=decoder_to_hf_config,
    partition_rules=decoder_partition_rules,
    parallel_dims=decoder_parallel_dims,
)
