"""nabla-jax models → Hugging Face directories (``config.json`` + ``model.safetensors``).

The inverse of :mod:`nabla_jax.models.load`: :func:`save_pretrained` writes a ``CausalLM`` as
``*ForCausalLM`` (GPT-2: ``GPT2LMHeadModel``) and a ``RewardModel`` as
``*ForSequenceClassification``, so that both ``nj.load_*`` and
``transformers.AutoModel*.from_pretrained`` read the directory back. The config comes from the
family's ``to_hf_config``; tensor names come from the same key table the loader reads: stacked
layer leaves are split per layer and transposed rows are transposed back. A tied model writes no
LM head.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nabla_jax.models.config import ModelConfig, UnsupportedModelError
from nabla_jax.models.convert import flatten_tree
from nabla_jax.models.keys import apply_transpose
from nabla_jax.models.layers import HEADS
from nabla_jax.models.registry import family_of

__all__ = ["export_tensors", "save_pretrained", "to_hf_dict"]


def to_hf_dict(cfg: ModelConfig, head: str = "lm") -> dict:
    """A Hugging Face ``config.json`` dict describing ``cfg`` (the family's ``to_hf_config``).

    Args:
      cfg: the model configuration.
      head: "lm" (``*ForCausalLM``) or "score" (``*ForSequenceClassification``).
    Raises:
      UnsupportedModelError: for settings the family's HF config cannot express, or a score head
        with more than one label.
      ValueError: a bad ``head``, or a score head without ``pad_token_id``.
    """
    if head not in HEADS:
        raise ValueError(f"head must be 'lm' or 'score', got {head!r}")
    out = family_of(cfg).to_hf_config(cfg, head)
    if head == "score":
        if cfg.num_labels != 1:
            raise UnsupportedModelError("only reward models with num_labels=1 are exported")
        if cfg.pad_token_id is None:
            raise ValueError(
                "a sequence-classification export needs config.pad_token_id (HF pools at the "
                "last non-pad token and refuses batches without a pad id)"
            )
    return out


def export_tensors(model) -> dict[str, np.ndarray]:
    """``{HF tensor name: float32 numpy array}`` for a ``CausalLM`` / ``RewardModel``.

    Every parameter leaf is written under the name(s) its key-table row gives: one tensor per
    layer for a stacked leaf ``[L, …]``, the last two axes swapped back for a transposed row.
    Raises:
      UnsupportedModelError: a parameter has no row in the family's key table.
    """
    cfg = model.config
    table = family_of(cfg).keys
    out: dict[str, np.ndarray] = {}
    for path, value in flatten_tree(model.params).items():
        row = table.row_for(path)
        if row is None:
            raise UnsupportedModelError(f"no checkpoint name for parameter {path}")
        x = np.asarray(value, dtype=np.float32)
        parts = list(x) if row.stacked else [x]
        for name, part in zip(table.hf_names(path, cfg.num_layers), parts, strict=True):
            out[name] = np.ascontiguousarray(apply_transpose(part, row.transpose))
    return out


def save_pretrained(model, directory, *, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face directory: ``config.json``, ``model.safetensors`` and
    (when given, or attached to the model when ``tokenizer`` is None) the tokenizer files.

    Args:
      model: a ``CausalLM`` or ``RewardModel`` of any family.
      directory: created if missing; existing files of the same names are overwritten.
      tokenizer: a Hugging Face tokenizer to save alongside; False to skip the model's own.
    Returns:
      the directory as a ``Path``.
    """
    from safetensors.numpy import save_file

    from nabla_jax.models.model import RewardModel

    head = "score" if isinstance(model, RewardModel) else "lm"
    hf = to_hf_dict(model.config, head)
    tensors = export_tensors(model)
    directory = Path(os.fspath(directory))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is None:
        tokenizer = model.tokenizer
    if tokenizer:
        from nabla_jax.text.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, directory)
    return directory
