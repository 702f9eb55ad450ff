"""nabla-jax models → Hugging Face directories (``config.json`` + ``model.safetensors``).

The inverse of :mod:`nabla_jax.models.load`: :func:`save_pretrained` writes a ``CausalLM`` as
``*ForCausalLM`` and a ``RewardModel`` as ``*ForSequenceClassification``, so that both
``nj.load_*`` and ``transformers.AutoModel*.from_pretrained`` read the directory back. Tensor names
are the inverse of :data:`nabla_jax.models.convert.DECODER_KEY_MAP`: stacked layer leaves are
split per layer and kernels ``[in, out]`` are transposed back to torch Linear weights
``[out, in]``. A tied model writes no ``lm_head.weight``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from nabla_jax.models.config import ModelConfig, UnsupportedModelError
from nabla_jax.models.convert import DECODER_KEY_MAP, flatten_tree

__all__ = ["export_tensors", "save_pretrained", "to_hf_dict"]

_ARCH_PREFIX = {"qwen2": "Qwen2", "llama": "Llama", "qwen3": "Qwen3", "mistral": "Mistral"}
_EXPORTABLE = tuple(_ARCH_PREFIX)


def _check_exportable(cfg: ModelConfig) -> None:
    if cfg.family not in _EXPORTABLE:
        raise UnsupportedModelError(
            f"save_pretrained does not export the {cfg.family!r} family; it writes the decoder "
            f"families {', '.join(_EXPORTABLE)}."
        )
    # Settings a family's HF config cannot express: refuse rather than write a different model.
    if cfg.family == "qwen2" and (cfg.o_bias or cfg.mlp_bias or not cfg.attention_bias):
        raise UnsupportedModelError("a qwen2 config needs q/k/v biases only (no o/mlp bias)")
    if cfg.family == "mistral" and (cfg.attention_bias or cfg.o_bias or cfg.mlp_bias):
        raise UnsupportedModelError("a mistral config cannot carry projection biases")
    if cfg.family in ("llama", "qwen3") and cfg.attention_bias != cfg.o_bias:
        raise UnsupportedModelError(
            f"{cfg.family} has one attention_bias switch for q/k/v/o; this config sets "
            f"attention_bias={cfg.attention_bias}, o_bias={cfg.o_bias}"
        )


def to_hf_dict(cfg: ModelConfig, head: str = "lm") -> dict:
    """A Hugging Face ``config.json`` dict describing ``cfg`` (decoder families).

    Args:
      cfg: the model configuration.
      head: "lm" (``*ForCausalLM``) or "score" (``*ForSequenceClassification``).
    Raises:
      UnsupportedModelError: for GPT-2 or settings the family's HF config cannot express.
    """
    if head not in ("lm", "score"):
        raise ValueError(f"head must be 'lm' or 'score', got {head!r}")
    _check_exportable(cfg)
    arch = _ARCH_PREFIX[cfg.family] + (
        "ForCausalLM" if head == "lm" else "ForSequenceClassification"
    )
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(
            low_freq_factor=cfg.rope_low_freq_factor,
            high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_max_position,
        )
    eos = cfg.eos_token_id
    out = {
        "architectures": [arch],
        "model_type": cfg.family,
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
        # v4 reads rope_theta / rope_scaling, v5 rope_parameters: write both.
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None if cfg.rope_type == "default" else dict(rope),
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
    out["num_labels"] = cfg.num_labels
    out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    if cfg.family in ("llama", "qwen3"):
        out["attention_bias"] = cfg.attention_bias
    if cfg.family == "llama":
        out["mlp_bias"] = cfg.mlp_bias
        out["pretraining_tp"] = 1
    if cfg.family in ("qwen2", "qwen3"):
        out["use_sliding_window"] = cfg.sliding_window is not None
        out["sliding_window"] = cfg.sliding_window
        out["max_window_layers"] = cfg.num_layers
        if cfg.layer_types:
            out["layer_types"] = list(cfg.layer_types)
    elif cfg.family == "mistral":
        out["sliding_window"] = cfg.sliding_window
        if cfg.layer_types and set(cfg.layer_types) != {"sliding_attention"}:
            raise UnsupportedModelError("mistral applies its sliding window to every layer")
    elif cfg.sliding_window is not None:
        raise UnsupportedModelError(f"{cfg.family} has no sliding-window attention")
    if head == "score":
        if cfg.num_labels != 1:
            raise UnsupportedModelError("only reward models with num_labels=1 are exported")
        if cfg.pad_token_id is None:
            raise ValueError(
                "a sequence-classification export needs config.pad_token_id (HF pools at the "
                "last non-pad token and refuses batches without a pad id)"
            )
    return out


def _inverse_rules():
    """(path regex, name template, group regex, layered, transform) per DECODER_KEY_MAP rule."""
    rules = []
    for pattern, target, transform in DECODER_KEY_MAP:
        layered = pattern.count(r"(\d+)") == 1
        text = pattern.replace(r"(\d+)", "{layer}", 1)
        groups = re.findall(r"\([^)]*\)", text)
        group = groups[0] if groups else None
        if group is not None:
            text = text.replace(group, "{g}", 1)
        name = text.replace("\\.", ".")
        path_re = re.escape(target).replace(re.escape("{1}"), r"(\w+)")
        rules.append((path_re, name, group, layered, transform))
    return rules


def export_tensors(model) -> dict[str, np.ndarray]:
    """``{HF tensor name: float32 numpy array}`` for a decoder ``CausalLM`` / ``RewardModel``."""
    cfg = model.config
    _check_exportable(cfg)
    rules = _inverse_rules()
    out: dict[str, np.ndarray] = {}
    for path, value in flatten_tree(model.params).items():
        x = np.asarray(value, dtype=np.float32)
        for path_re, name, group, layered, transform in rules:
            m = re.fullmatch(path_re, path)
            if m is None or (group is not None and not re.fullmatch(group, m.group(1))):
                continue
            key = name.replace("{g}", m.group(1)) if group is not None else name
            if layered:
                for i in range(cfg.num_layers):
                    w = x[i].T if transform == "T" else x[i]
                    out[key.replace("{layer}", str(i))] = np.ascontiguousarray(w)
            else:
                out[key] = np.ascontiguousarray(x.T if transform == "T" else x)
            break
        else:
            raise UnsupportedModelError(f"no checkpoint name for parameter {path}")
    return out


def save_pretrained(model, directory, *, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face directory: ``config.json``, ``model.safetensors`` and
    (when given, or attached to the model when ``tokenizer`` is None) the tokenizer files.

    Args:
      model: a decoder-family ``CausalLM`` or ``RewardModel``.
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
        from nabla_jax.tasks.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, directory)
    return directory
