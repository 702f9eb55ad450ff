"""Load causal LMs and reward models from a local Hugging Face directory."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.models.config import ModelConfig
from nabla_jax.models.convert import (
    CorruptCheckpointError,
    convert_tensors,
    convert_tensors_sharded,
    read_checkpoint,
    to_device,
)
from nabla_jax.models.model import CausalLM, RewardModel, param_shapes, resolve_dtype
from nabla_jax.models.registry import config_from_hf, family_of

__all__ = [
    "check_finite",
    "check_model_dir",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "read_model_config",
]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
#: The files that hold a vocabulary (tokenizer_config.json alone holds none).
_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")


def check_model_dir(path) -> str:
    """``path`` as a str once it names a local HF model directory holding ``config.json``;
    otherwise a one-line ``TypeError`` / ``FileNotFoundError`` saying what to pass."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a str or os.PathLike naming a local model directory, "
            f"got {type(path).__name__} {path!r}"
        )
    path = os.fspath(path)
    if os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} is a file; pass the model directory that holds it (config.json and "
            "model.safetensors)"
        )
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"model directory {path!r} does not exist; pass a local directory holding "
            "config.json and model.safetensors (nothing is downloaded from a hub)"
        )
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face model directory?")
    return path


#: ``tokenizer_class`` values that mean "tokenizer.json as written, no model-specific class".
_GENERIC_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _declared_tokenizer_class(path: str) -> str | None:
    cfg = os.path.join(path, "tokenizer_config.json")
    try:
        with open(cfg, encoding="utf-8") as f:
            return json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None  # AutoTokenizer reads (and reports) it


def load_tokenizer(path):
    """The directory's tokenizer, or None when it has no tokenizer files.

    A ``tokenizer_config.json`` naming the generic fast class (``PreTrainedTokenizerFast``, as
    the bundled models' does) loads ``tokenizer.json`` exactly as written with that class.
    transformers 5's ``AutoTokenizer`` would instead pick the class of ``config.json``'s
    ``model_type`` and rebuild its pre-tokenizer (a Qwen2 regex in place of the bundled digit /
    punctuation split), and importing it imports torch (~5 s). Any other class goes through
    ``AutoTokenizer``. Tokenizer settings without a vocabulary (tokenizer_config.json but no
    tokenizer.json) raise ``FileNotFoundError`` naming the missing file: such a tokenizer would
    encode nothing."""
    path = os.fspath(path)
    if not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return None
    if not any(os.path.exists(os.path.join(path, f)) for f in _VOCAB_FILES):
        raise FileNotFoundError(
            f"{path} has tokenizer settings but no vocabulary: "
            f"{os.path.join(path, 'tokenizer.json')} is missing (nor vocab.json / tokenizer.model);"
            " copy the tokenizer files next to config.json, or pass tokenizer=False"
        )
    if _declared_tokenizer_class(path) in _GENERIC_TOKENIZER_CLASSES and os.path.exists(
        os.path.join(path, "tokenizer.json")
    ):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def read_model_config(path) -> ModelConfig:
    """``config_from_hf(path)``; a config.json that is not JSON is named as corrupt."""
    try:
        return config_from_hf(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(
            f"{os.path.join(path, 'config.json')} is not valid JSON ({e}); the file is corrupt"
        ) from None


@jax.jit
def _all_finite(leaves: list) -> list:
    return [jnp.isfinite(leaf).all() for leaf in leaves]


def check_finite(params, path, layer_stack: str = "layers") -> None:
    """Raise ``CorruptCheckpointError`` naming the first parameter holding NaN or ±inf (and,
    for a leaf under ``layer_stack``, stacked ``[L, …]``, the first bad layer)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    finite = _all_finite([leaf for _, leaf in leaves])  # one program, not one per leaf shape
    for (key, leaf), ok in zip(leaves, jax.device_get(finite)):
        if not ok:
            name = jax.tree_util.keystr(key)
            if getattr(key[0], "key", None) == layer_stack:  # stacked: name the layer
                bad = ~np.asarray(jnp.isfinite(leaf).reshape(leaf.shape[0], -1).all(-1))
                name += f" (layer {int(np.argmax(bad))})"
            raise CorruptCheckpointError(
                f"{path}: parameter {name} holds NaN or inf values; the checkpoint is broken "
                "(check how it was trained or saved)"
            )


def _load(path, dtype, head, allow_pickle, tokenizer, mesh=None):
    path = check_model_dir(path)
    dtype = resolve_dtype(dtype)
    cfg = read_model_config(path)
    tensors = read_checkpoint(path, allow_pickle)
    has_score = "score.weight" in tensors
    if head == "lm" and has_score:
        raise ValueError(
            f"{path} is a sequence-classification checkpoint (it has score.weight); "
            "load it with load_reward_model"
        )
    if head == "score" and not has_score:
        raise ValueError(
            f"{path} has no score head (score.weight); load_reward_model needs a "
            "*ForSequenceClassification checkpoint with num_labels=1 (use load_causal_lm for LMs)"
        )
    shapes = param_shapes(cfg, dtype, head)
    if mesh is None:
        params = to_device(convert_tensors(cfg, tensors, shapes, dtype))
    else:
        from nabla_jax.models.partition import param_shardings

        shardings = param_shardings(cfg, shapes, mesh)
        params = convert_tensors_sharded(cfg, tensors, shapes, dtype, shardings)
    check_finite(params, path, family_of(cfg).layer_stack)
    tok = load_tokenizer(path) if tokenizer is True else tokenizer or None
    return cfg, params, tok, dtype


def load_causal_lm(
    path, dtype="float32", *, allow_pickle=False, tokenizer=True, mesh=None
) -> CausalLM:
    """Load a ``*ForCausalLM`` checkpoint (Llama, Qwen2, Qwen3, Mistral, GPT-2).

    Args:
      path: local directory with ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json``), and optionally tokenizer files.
      dtype: "float32" or "bfloat16" for parameters and activations.
      allow_pickle: permit ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``).
      tokenizer: True to load the directory's tokenizer (None if it has none), False to skip,
        or a tokenizer object to attach.
      mesh: a ``jax.sharding.Mesh`` (``nj.sharding.make_mesh``): each weight is read straight
        into its sharded layout (split over "model" by ``sharding.param_partition_specs``,
        replicated over "data"); a device only ever receives its own shard.
    """
    cfg, params, tok, dtype = _load(path, dtype, "lm", allow_pickle, tokenizer, mesh)
    return CausalLM(cfg, params, tok, dtype)


def load_reward_model(
    path, dtype="float32", *, allow_pickle=False, tokenizer=True, mesh=None
) -> RewardModel:
    """Load a ``*ForSequenceClassification`` checkpoint as a reward model (score head).

    Arguments as ``load_causal_lm`` (``mesh``: load the weights sharded over it).
    """
    cfg, params, tok, dtype = _load(path, dtype, "score", allow_pickle, tokenizer, mesh)
    return RewardModel(cfg, params, tok, dtype)
