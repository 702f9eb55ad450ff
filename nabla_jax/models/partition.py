"""Parameter layouts on a device mesh: each family's partition rules applied to a model.

Partition rules are family facts: each family declares them (``partition_rules`` of its
``ModelFamily``, e.g. ``models/decoder/hf.py``, ``models/gpt2.py``) as ``(path regex, spec)``
pairs for a given model axis size ``m``, Megatron-style: projections into heads or the MLP width
split on their output axis, projections out of them on their input axis, the embedding over
vocabulary rows when ``V % m == 0``, norms and small heads replicated. This module applies them;
the mesh itself is ``nabla_jax.runtime.sharding``'s.

Correctness never depends on these rules (GSPMD computes the same function for any sharding of the
inputs); they decide memory per device and communication.
"""

from __future__ import annotations

import math
import re

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nabla_jax.models.convert import flatten_tree, unflatten_tree
from nabla_jax.models.registry import family_of
from nabla_jax.runtime.sharding import MODEL, axis_size

__all__ = [
    "param_partition_specs",
    "param_shardings",
    "shard_model",
    "shard_params",
    "shard_refine_models",
]


def _valid_model_sizes(dims: dict[str, int]) -> list[int]:
    g = 0
    for d in dims.values():
        g = math.gcd(g, d)
    return [k for k in range(1, g + 1) if g % k == 0]


def _require(dims: dict[str, int], m: int):
    bad = [f"{name}={n}" for name, n in dims.items() if n % m]
    if bad:
        raise ValueError(
            f"the model axis size {m} does not divide {', '.join(bad)}: tensor parallelism splits "
            f"attention heads and the MLP over 'model'. Use a model axis size that divides "
            f"{', '.join(f'{k}={v}' for k, v in dims.items())} (one of "
            f"{_valid_model_sizes(dims)}) and put the remaining devices on 'data'"
        )


def param_partition_specs(config, params, mesh: Mesh | None = None, *, model_axis_size=None):
    """A ``PartitionSpec`` for every parameter leaf (same tree structure as ``params``).

    Args:
      config: the model's ``ModelConfig``.
      params: the parameter tree (arrays or ``ShapeDtypeStruct``; only paths and ranks are read).
      mesh: the mesh whose "model" axis the specs are for; or give ``model_axis_size``. With
        neither, the size is 1 and the specs are the intended layout (every rule applies).
    Raises:
      ValueError: the model axis size does not divide the heads or the MLP width (naming them and
        the sizes that would), or a parameter has no rule.
    """
    m = int(model_axis_size) if model_axis_size is not None else axis_size(mesh, MODEL)
    if m < 1:
        raise ValueError(f"model axis size must be ≥ 1, got {m}")
    family = family_of(config)
    _require(family.parallel_dims(config), m)
    rules = family.partition_rules(config, m)
    specs = {}
    for path, leaf in flatten_tree(params).items():
        spec = next((s for pattern, s in rules if re.fullmatch(pattern, path)), None)
        if spec is None:
            raise ValueError(
                f"no partition rule for parameter {path!r} of model_type {config.model_type!r}; "
                f"add one to the {family.name} family's partition_rules"
            )
        if len(spec) > len(leaf.shape):
            raise ValueError(f"rule {spec} for {path!r} has more axes than its shape {leaf.shape}")
        specs[path] = spec
    return unflatten_tree(specs)


def _is_spec(x) -> bool:
    return isinstance(x, P)


def param_shardings(config, params, mesh: Mesh):
    """``NamedSharding`` tree for ``params`` on ``mesh`` (``param_partition_specs`` on it)."""
    specs = param_partition_specs(config, params, mesh)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def shard_params(params, specs, mesh: Mesh):
    """Place ``params`` on ``mesh`` following the ``PartitionSpec`` tree ``specs``."""
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)
    return jax.device_put(params, shardings)


def shard_model(model, mesh: Mesh | None):
    """The same ``CausalLM`` / ``RewardModel`` with its parameters laid out on ``mesh``.

    Parameters are split over "model" by ``param_partition_specs`` and replicated over "data".
    ``mesh=None`` returns ``model`` unchanged; on a one-device mesh the parameters only move to
    that device (no copy when they are already there).
    """
    if mesh is None or model is None:
        return model
    specs = param_partition_specs(model.config, model.params, mesh)
    params = shard_params(model.params, specs, mesh)
    _, aux = model.tree_flatten()
    return type(model).tree_unflatten(aux, (params,))


def shard_refine_models(lm, rm, rm_table, mesh: Mesh):
    """``(lm, rm, rm_table)`` laid out for a sharded refinement: params over "model"; the RM
    embedding table ``[V_lm, D_rm]`` split over vocabulary rows when they divide, else replicated.
    """
    lm = shard_model(lm, mesh)
    rm = shard_model(rm, mesh)
    if rm_table is not None:
        m = axis_size(mesh, MODEL)
        spec = P(MODEL, None) if rm_table.shape[0] % m == 0 else P()
        rm_table = jax.device_put(rm_table, NamedSharding(mesh, spec))
    return lm, rm, rm_table
