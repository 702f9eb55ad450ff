"""profiling.track(): per-program seconds of tracing, lowering and compiling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nabla_jax.runtime import profiling


def test_seconds_by_program_names_each_compiled_program():
    @jax.jit
    def doubled_sine(x):
        return jnp.sin(x) * 2

    with profiling.track() as t:
        doubled_sine(jnp.ones(7)).block_until_ready()
        doubled_sine(jnp.ones(7)).block_until_ready()  # cached in memory: no new phase
    times = t.seconds_by_program["doubled_sine"]
    assert set(times) == {"trace", "lower", "compile"}
    assert times["lower"] > 0 and times["compile"] > 0
    assert t.compiles >= 1 and t.compile_seconds >= times["compile"]
