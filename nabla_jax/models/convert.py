"""Hugging Face checkpoint tensors → nabla-jax parameter trees, and checkpoint file reading.

Each family declares its checkpoint map as a ``KeyTable`` (``models/keys.py``) beside its module;
this module applies the table. Conversion is strict: every checkpoint key must match a row (or an
explicit ignore template) and every model leaf must be filled, every layer of it. A silent
mismatch would make a model quietly worse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import jax
import ml_dtypes
import numpy as np

from nabla_jax.models.config import ModelConfig
from nabla_jax.models.keys import apply_transpose
from nabla_jax.models.registry import family_of

__all__ = [
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "checkpoint_files",
    "convert_tensors",
    "convert_tensors_sharded",
    "flatten_tree",
    "plan_conversion",
    "read_checkpoint",
    "read_safetensors",
    "SafetensorsTensor",
    "to_device",
    "unflatten_tree",
]


class CheckpointMismatchError(ValueError):
    """Checkpoint keys and model parameters do not correspond one to one."""


def flatten_tree(tree: Mapping, prefix="") -> dict:
    """A nested parameter mapping as ``{"a/b/c": leaf}`` (the paths key tables name)."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, path + "/"))
        else:
            out[path] = v
    return out


def unflatten_tree(flat: Mapping) -> dict:
    """The inverse of ``flatten_tree``: ``{"a/b/c": leaf}`` → nested dicts."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def plan_conversion(cfg: ModelConfig, keys: Iterable[str], shapes: Mapping) -> dict:
    """Map each checkpoint key to (path, layer, transform), checking the key sets correspond.

    Args:
      cfg: the model's config (selects the family's key table).
      keys: checkpoint tensor names.
      shapes: the model's parameter tree of ``ShapeDtypeStruct`` (from ``param_shapes``).
    Returns:
      ``{checkpoint key: (path, layer, transform)}``; tied aliases map to ``("<tied>", …)``.
    Raises:
      CheckpointMismatchError: naming unused checkpoint keys and unfilled parameter leaves.
    """
    table = family_of(cfg).keys
    flat = flatten_tree(shapes)
    plan, unused = {}, []
    filled: dict[str, set] = {p: set() for p in flat}
    for key in keys:
        if table.is_ignored(key):
            continue
        routed = table.route(key)
        if routed is not None and routed[0].path in flat:
            row, layer = routed
            if layer is not None and layer >= cfg.num_layers:
                unused.append(key)
                continue
            filled[row.path].add(layer)
            plan[key] = (row.path, layer, "T" if row.transpose else None)
        elif table.tied_source(key) is not None and cfg.tie_word_embeddings:
            plan[key] = ("<tied>", None, table.tied_source(key))
        else:
            unused.append(key)
    missing = []
    for path, layers in filled.items():
        row = table.row_for(path)
        stacked = row is not None and row.stacked
        want = set(range(cfg.num_layers)) if stacked else {None}
        if layers != want:
            lacking = sorted(want - layers, key=lambda x: -1 if x is None else x)
            missing.append(f"{path} (layers {lacking})" if stacked else path)
    if unused or missing:
        raise CheckpointMismatchError(
            f"checkpoint does not match the {cfg.model_type} model:\n"
            f"  checkpoint keys with no parameter: {sorted(unused) or 'none'}\n"
            f"  parameters with no checkpoint key: {missing or 'none'}\n"
            "Check that config.json describes these weights and that the right loader is used "
            "(load_causal_lm for *ForCausalLM, load_reward_model for *ForSequenceClassification)."
        )
    return plan


def _shape_mismatch(cfg: ModelConfig, key: str, got, path: str, want) -> CheckpointMismatchError:
    """A weight whose shape does not fit the model config.json describes; when the differing
    axis is the vocabulary, say that config.json's ``vocab_size`` disagrees with the weights."""
    got, want = tuple(int(n) for n in got), tuple(int(n) for n in want)
    msg = f"{key}: shape {got} does not fit {path}{want}"
    if len(got) == len(want):
        for g, w in zip(got, want):
            if g != w and w == cfg.vocab_size:
                return CheckpointMismatchError(
                    f"config.json says vocab_size={w} but the weights have {g} rows in {key} "
                    f"({msg}); config.json does not match the weights — fix its vocab_size"
                )
    return CheckpointMismatchError(f"{msg}; config.json does not match the weights")


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    target = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    return np.asarray(x).astype(target, copy=False)


def convert_tensors(
    cfg: ModelConfig, tensors: Mapping[str, np.ndarray], shapes: Mapping, dtype: str
) -> dict:
    """Build the host (numpy) parameter tree from checkpoint ``tensors``.

    Layer-indexed leaves are stacked on axis 0. Shapes are checked against ``shapes``.
    A tied alias (``lm_head.weight`` of a tied model) must equal the embedding it aliases.
    """
    plan = plan_conversion(cfg, tensors.keys(), shapes)
    flat_shapes = flatten_tree(shapes)
    flat: dict[str, np.ndarray] = {}
    for key, (path, layer, transform) in plan.items():
        if path == "<tied>":
            continue
        x = apply_transpose(tensors[key], transform == "T")
        want = flat_shapes[path].shape
        if layer is not None:
            if path not in flat:
                flat[path] = np.empty(want, dtype=_cast(np.zeros(()), dtype).dtype)
            if tuple(x.shape) != tuple(want[1:]):
                raise _shape_mismatch(cfg, key, x.shape, path, want[1:])
            flat[path][layer] = _cast(x, dtype)
        else:
            if tuple(x.shape) != tuple(want):
                raise _shape_mismatch(cfg, key, x.shape, path, want)
            flat[path] = _cast(x, dtype)
    _check_tied(plan, tensors)
    return unflatten_tree(flat)


def _check_tied(plan: Mapping, tensors: Mapping):
    for key, (path, _, source) in plan.items():
        if path == "<tied>" and not np.array_equal(
            np.asarray(tensors[key]), np.asarray(tensors[source])
        ):
            raise CheckpointMismatchError(
                f"config says tie_word_embeddings but {key} differs from {source}; "
                "set tie_word_embeddings=false in config.json"
            )


def convert_tensors_sharded(
    cfg: ModelConfig, tensors: Mapping[str, np.ndarray], shapes: Mapping, dtype: str, shardings
) -> dict:
    """Like ``convert_tensors``, but each leaf is built straight into its device layout.

    Every leaf is ``jax.make_array_from_callback(shape, sharding, callback)``: the callback is
    asked for one device's index (a tuple of slices of the converted leaf) and reads only that
    part of the checkpoint tensors (``safe_open`` slices; for a transposed tensor the index is
    swapped before the read), layer by layer, so a device receives only its shard and no full
    copy of a split leaf is ever made on a device. Same key table, strictness and shape checks
    as the host path.

    Args:
      shardings: tree of ``jax.sharding.Sharding`` matching ``shapes``.
    """
    plan = plan_conversion(cfg, tensors.keys(), shapes)
    flat_shapes = flatten_tree(shapes)
    flat_shardings = flatten_tree(shardings)
    sources: dict[str, dict] = {}
    for key, (path, layer, transform) in plan.items():
        if path == "<tied>":
            continue
        x = tensors[key]
        got = tuple(x.shape[:-2]) + tuple(reversed(x.shape[-2:])) if transform == "T" else x.shape
        want = flat_shapes[path].shape
        want = tuple(want[1:]) if layer is not None else tuple(want)
        if tuple(got) != want:
            raise _shape_mismatch(cfg, key, got, path, want)
        sources.setdefault(path, {})[layer] = (key, transform)
    _check_tied(plan, tensors)
    target = _cast(np.zeros(()), dtype).dtype

    def view(key, transform, index):
        """``apply_transpose(tensor, T)[index]``, reading only that part of the file."""
        x = tensors[key]
        if transform == "T" and len(index) >= 2:
            index = index[:-2] + (index[-1], index[-2])
            return apply_transpose(x[index], True)
        return x[index] if index else np.asarray(x)

    def leaf(path):
        shape = flat_shapes[path].shape
        src = sources[path]
        stacked = None not in src

        def callback(index):
            index = tuple(index) if index is not None else ()
            index = index + (slice(None),) * (len(shape) - len(index))
            if stacked:
                layers = range(shape[0])[index[0]]
                parts = [_cast(view(*src[i], index[1:]), dtype) for i in layers]
                return np.stack(parts) if parts else np.empty((0,) + shape[1:], target)
            return np.ascontiguousarray(_cast(view(*src[None], index), dtype))

        return jax.make_array_from_callback(shape, flat_shardings[path], callback, dtype=target)

    return unflatten_tree({path: leaf(path) for path in flat_shapes})


# -- safetensors -----------------------------------------------------------------------------

_ST_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsTensor:
    """One tensor of an open safetensors file, read only when indexed (``x[slices]`` reads that
    part: a device's shard) or converted (``np.asarray(x)`` reads all of it)."""

    def __init__(self, handle, path: str, name: str):
        self._handle, self.path, self.name = handle, path, name
        self._slice = handle.get_slice(name)
        code = self._slice.get_dtype()
        if code not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {code}")
        self.dtype = np.dtype(_ST_DTYPES[code])
        self.shape = tuple(int(n) for n in self._slice.get_shape())
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        if self.ndim == 0:
            return np.asarray(self)[index]
        return np.asarray(self._slice[index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = np.asarray(self._handle.get_tensor(self.name))
        return x if dtype is None else x.astype(dtype)

    def __repr__(self) -> str:
        return f"SafetensorsTensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def read_safetensors(path: str) -> dict[str, SafetensorsTensor]:
    """Open a ``.safetensors`` file with ``safetensors.safe_open`` (numpy): ``{name: tensor}``
    without reading the data yet. The package checks the header and that the data offsets
    cover the file exactly, so a truncated or garbled file fails here
    (:class:`CorruptCheckpointError` naming it), not later in a reshape."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(path, framework="numpy")
        names = list(handle.keys())
    except (SafetensorError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise CorruptCheckpointError(
            f"{path}: not a readable safetensors file ({size} bytes: {e}); the file is corrupt "
            "or truncated — re-save or re-download it"
        ) from None
    return {name: SafetensorsTensor(handle, path, name) for name in names}


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, random bytes, bad JSON) or whose
    weights are not finite; the message names the file or the tensor."""


def checkpoint_files(directory: str, allow_pickle: bool = False) -> tuple[str, list[str]]:
    """("safetensors" | "pickle", files) of the checkpoint in ``directory``."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(directory, s) for s in shards]
        absent = [p for p in files if not os.path.exists(p)]
        if absent:
            raise FileNotFoundError(f"sharded checkpoint is missing files: {absent}")
        return "safetensors", files
    if os.path.exists(single):
        return "safetensors", [single]
    pickled = [
        os.path.join(directory, n)
        for n in sorted(os.listdir(directory))
        if n.startswith("pytorch_model") and n.endswith(".bin")
    ]
    if pickled:
        if not allow_pickle:
            raise ValueError(
                f"{directory} holds only pickled PyTorch weights ({os.path.basename(pickled[0])}); "
                "nabla-jax does not unpickle by default. Convert them to safetensors, or pass "
                "allow_pickle=True (command line: --allow-pickle) to load them with "
                "torch.load(weights_only=True)."
            )
        return "pickle", pickled
    raise FileNotFoundError(
        f"no weights in {directory}: expected model.safetensors, model.safetensors.index.json "
        "or (with allow_pickle=True) pytorch_model.bin"
    )


def read_checkpoint(directory: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory: safetensors as :class:`SafetensorsTensor` (read
    when indexed or converted with ``np.asarray``), pickled weights as numpy arrays."""
    kind, files = checkpoint_files(directory, allow_pickle)
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        if kind == "safetensors":
            part = read_safetensors(path)
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
            part = {k: v.float().numpy() for k, v in state.items()}
        dup = tensors.keys() & part.keys()
        if dup:
            raise CheckpointMismatchError(f"tensors {sorted(dup)} appear in two shards")
        tensors.update(part)
    return tensors


def to_device(tree, shardings=None):
    """Move a host parameter tree onto devices (optionally with a matching sharding tree)."""
    if shardings is None:  # a plain transfer: jnp.asarray would compile a program per shape
        return jax.device_put(tree)
    return jax.tree.map(jax.device_put, tree, shardings)
