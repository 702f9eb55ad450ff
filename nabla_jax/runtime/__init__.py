"""The runtime layer, below the models: device meshes and batch sharding
(:mod:`~nabla_jax.runtime.sharding`), shape buckets (:mod:`~nabla_jax.runtime.buckets`),
compile and transfer counting (:mod:`~nabla_jax.runtime.profiling`), a compiled program's memory
by XLA's count (:mod:`~nabla_jax.runtime.memory`), the persistent compilation cache
(:mod:`~nabla_jax.runtime.compilation_cache`) and multi-host start-up
(:mod:`~nabla_jax.runtime.distributed`). It imports nothing else of nabla-jax."""

__all__: list[str] = []
