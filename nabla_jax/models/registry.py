"""The model families nabla-jax implements, and the lookup from a config to its family.

Adding a family: write its module (Flax module, ``KeyTable``, config in/out, partition rules and a
``FAMILY = ModelFamily(...)``) and append that ``FAMILY`` to ``FAMILIES`` below.
"""

from __future__ import annotations

from typing import Any

from nabla_jax.models import decoder, gpt2
from nabla_jax.models.config import ModelConfig, UnsupportedModelError, read_hf_config
from nabla_jax.models.family import ModelFamily

__all__ = [
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "config_from_hf",
    "family_for_model_type",
    "family_of",
]

FAMILIES: tuple[ModelFamily, ...] = (decoder.FAMILY, gpt2.FAMILY)
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}
if len(_BY_MODEL_TYPE) != sum(len(f.model_types) for f in FAMILIES):
    raise ValueError("two model families claim the same Hugging Face model_type")
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_BY_MODEL_TYPE)


def family_for_model_type(model_type, hf: dict | None = None) -> ModelFamily:
    """The family that reads HF ``model_type``; ``hf`` (the config dict) only adds its
    ``architectures`` to the error.

    Raises:
      UnsupportedModelError: naming the model type and the supported ones.
    """
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        arch = f" (architectures {hf.get('architectures')})" if hf is not None else ""
        raise UnsupportedModelError(
            f"model_type {model_type!r}{arch} is not supported; nabla-jax implements "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    return family


def family_of(cfg: ModelConfig) -> ModelFamily:
    """The family of a ``ModelConfig`` (by its ``model_type``).

    Raises:
      UnsupportedModelError: no family implements the config's ``model_type``.
    """
    return family_for_model_type(cfg.model_type)


def config_from_hf(hf: Any) -> ModelConfig:
    """A ``ModelConfig`` from an HF config: a ``PretrainedConfig``, a dict, or a ``config.json``
    path (or its directory). The family of the config's ``model_type`` maps it
    (``ModelFamily.from_hf_config``).

    Raises:
      UnsupportedModelError: no family implements the ``model_type`` (naming the supported ones).
    """
    hf = read_hf_config(hf)
    return family_for_model_type(hf.get("model_type"), hf).from_hf_config(hf)
