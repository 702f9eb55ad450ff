"""Device meshes and parameter layouts, the public ``nj.sharding``: the mesh and batch half
(:mod:`nabla_jax.runtime.sharding`) and the parameter half (:mod:`nabla_jax.models.partition`)
under one name.

A mesh has two axes: ``"data"`` (rows of a batch) and ``"model"`` (tensor parallelism inside each
layer). Parameters are replicated over ``"data"`` and split over ``"model"`` by their family's
rules; batches are split over ``"data"`` on their leading axis. The same jitted functions run on
sharded arguments and XLA's SPMD partitioner inserts the collectives, so results equal the
single-device run up to floating-point summation order.
"""

from nabla_jax.models.partition import (
    param_partition_specs,
    param_shardings,
    shard_model,
    shard_params,
    shard_refine_models,
)
from nabla_jax.runtime.sharding import (
    AXES,
    DATA,
    MODEL,
    axis_size,
    batch_sharding,
    check_batch_divisible,
    make_mesh,
    mesh_of,
    parse_mesh_spec,
    replicated,
    shard_batch,
    shard_rows_like,
)

__all__ = [
    "AXES",
    "DATA",
    "MODEL",
    "axis_size",
    "batch_sharding",
    "check_batch_divisible",
    "make_mesh",
    "mesh_of",
    "param_partition_specs",
    "param_shardings",
    "parse_mesh_spec",
    "replicated",
    "shard_batch",
    "shard_model",
    "shard_params",
    "shard_refine_models",
    "shard_rows_like",
]
