"""Device mesh and batch sharding (``jax.sharding``, GSPMD).

A mesh has two axes: ``"data"`` (rows of a batch) and ``"model"`` (tensor parallelism inside each
layer). Parameters are replicated over ``"data"`` and split over ``"model"`` by the family's rules;
batches are split over ``"data"`` on their leading axis. Nothing else changes: the same jitted
functions run on sharded arguments and XLA's SPMD partitioner inserts the collectives, so results
equal the single-device run up to floating-point summation order.

Parameter layouts are model facts and live with the models (``nabla_jax.models.partition``);
``nabla_jax.sharding`` puts both halves under one public name.

Correctness never depends on these rules (GSPMD computes the same function for any sharding of the
inputs); they decide memory per device and communication.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

#: The mesh axes: rows of a batch, and tensor parallelism inside each layer.
DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)

__all__ = [
    "AXES",
    "DATA",
    "MODEL",
    "axis_size",
    "batch_sharding",
    "check_batch_divisible",
    "make_mesh",
    "mesh_of",
    "parse_mesh_spec",
    "replicated",
    "shard_batch",
    "shard_rows_like",
]


# -- meshes ---------------------------------------------------------------------------------


def _parse_size(axis, value) -> int:
    if isinstance(value, str):
        value = value.strip()
        if not re.fullmatch(r"-?\d+", value):
            raise ValueError(
                f"mesh axis {axis!r} has size {value!r}; give an integer (or -1: fill)"
            )
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"mesh axis {axis!r} has size {value!r}; give an integer (or -1: fill)")
    value = int(value)
    if value == 0 or value < -1:
        raise ValueError(f"mesh axis {axis!r} has size {value}; sizes are ≥ 1 (or -1: fill)")
    return value


def parse_mesh_spec(spec, num_devices: int) -> dict[str, int]:
    """Resolve a mesh spec to ``{"data": d, "model": m}`` with ``d * m == num_devices``.

    Args:
      spec: None (every device on "data"); a dict like ``{"data": 4, "model": 2}``; a string
        ``"data=4,model=2"``; or a pair ``(data, model)``. One axis may be -1 or omitted: it takes
        the devices the other leaves.
      num_devices: devices the mesh must use.
    Raises:
      ValueError: unknown axis names, bad sizes, or a mesh that does not fit ``num_devices``.
    """
    if num_devices < 1:
        raise ValueError("no devices to build a mesh from")
    if spec is None:
        raw: dict[str, Any] = {DATA: -1}
    elif isinstance(spec, str):
        raw = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise ValueError(
                    f"mesh spec {spec!r}: {part!r} is not 'axis=size'; write e.g. 'data=4,model=2'"
                )
            name, value = (s.strip() for s in part.split("=", 1))
            if name in raw:
                raise ValueError(f"mesh spec {spec!r} names axis {name!r} twice")
            raw[name] = value
    elif isinstance(spec, Mapping):
        raw = dict(spec)
    elif isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError(f"a mesh shape must be (data, model), got {tuple(spec)}")
        raw = dict(zip(AXES, spec))
    else:
        raise ValueError(
            f"mesh spec must be None, a dict, a 'data=4,model=2' string or a (data, model) pair; "
            f"got {type(spec).__name__}"
        )
    unknown = sorted(set(raw) - set(AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the axes are 'data' and 'model'")
    given = {a: _parse_size(a, raw[a]) for a in AXES if a in raw}
    if not given:
        given = {DATA: -1}
    if len(given) == 1:
        ((axis, size),) = given.items()
        other = MODEL if axis == DATA else DATA
        # "data=4": model fills; "model=-1" alone: model takes every device.
        given[other] = 1 if size == -1 else -1
    if list(given.values()).count(-1) > 1:
        raise ValueError("only one mesh axis may be -1 (fill); give the size of the other")
    sizes = {a: given[a] for a in AXES}
    fill = [a for a in AXES if sizes[a] == -1]
    if fill:
        (other,) = (a for a in AXES if a not in fill)
        if num_devices % sizes[other]:
            raise ValueError(
                f"mesh axis {other}={sizes[other]} does not divide the {num_devices} available "
                f"devices; choose a divisor of {num_devices}"
            )
        sizes[fill[0]] = num_devices // sizes[other]
    used = sizes[DATA] * sizes[MODEL]
    if used != num_devices:
        raise ValueError(
            f"mesh data={sizes[DATA]} × model={sizes[MODEL]} needs {used} devices but "
            f"{num_devices} are available; make the product equal {num_devices} (or pass "
            "devices=jax.devices()[:n] to use fewer)"
        )
    return sizes


def make_mesh(spec=None, devices=None) -> Mesh:
    """A ``Mesh`` with axes ("data", "model") over ``devices`` (default: ``jax.devices()``).

    See ``parse_mesh_spec`` for ``spec``. The axes are ``AxisType.Auto``: jitted functions take
    sharded arguments and the partitioner propagates the shardings (GSPMD).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = (sizes[DATA], sizes[MODEL])
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # topology-unaware fallback (e.g. an unusual device subset)
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def axis_size(mesh: Mesh | None, axis: str) -> int:
    """Size of ``axis`` in ``mesh`` (1 when there is no mesh or no such axis)."""
    if mesh is None:
        return 1
    return int(dict(mesh.shape).get(axis, 1))


# -- batches --------------------------------------------------------------------------------


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over "data", the rest replicated."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh | None, what: str = "batch_size"):
    """Raise a ValueError unless ``batch_size`` splits evenly over the mesh's "data" axis."""
    d = axis_size(mesh, DATA)
    if batch_size % d:
        lo = max(d, batch_size // d * d)
        raise ValueError(
            f"{what}={batch_size} is not divisible by the mesh's data axis size {d}: each device "
            f"row takes an equal share of the batch. Use {what}={lo} or {lo + d}, or a mesh with a "
            "data axis that divides it"
        )


def shard_batch(tree, mesh: Mesh):
    """Put every array of ``tree`` (leading axis = batch) on ``mesh`` split over "data"."""
    sharding = batch_sharding(mesh)

    def put(x):
        if x is None:
            return None
        check_batch_divisible(x.shape[0], mesh, "the batch axis")
        return jax.device_put(x, sharding)

    return jax.tree.map(put, tree)


def mesh_of(model) -> Mesh | None:
    """The mesh a model's parameters are laid out on (shard_model, sharded loading), or None."""
    leaves = jax.tree.leaves(getattr(model, "params", model))
    sharding = getattr(leaves[0], "sharding", None) if leaves else None
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


def shard_rows_like(model, tree):
    """Split ``tree``'s leading (batch) axis over "data" of ``model``'s mesh, when it has one and
    the axis divides; otherwise return ``tree`` unchanged (replicated rows compute the same)."""
    mesh = mesh_of(model)
    if mesh is None or axis_size(mesh, "data") == 1:
        return tree
    rows = jax.tree.leaves(tree)[0].shape[0]
    if rows % axis_size(mesh, "data"):
        return tree
    return shard_batch(tree, mesh)
