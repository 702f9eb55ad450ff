"""What a compiled program needs in device memory, by XLA's own count, before anything runs.

:func:`abstract` turns a pytree of arrays (or anything with ``shape`` and ``dtype``) into
``jax.ShapeDtypeStruct`` leaves, so a program can be lowered and compiled for shapes nobody has
allocated — a 7B model on a laptop. :func:`program_memory` reads ``compiled.memory_analysis()``
into plain byte counts and the peak they imply::

    lowered = jax.jit(f).lower(*abstract(args))
    figures = program_memory(lowered.compile())   # {"argument_bytes": …, "peak_bytes": …}

The peak is ``arguments + outputs + temporaries − aliased``: every argument stays live for the
whole call, the outputs are live at its end, the temporaries are XLA's buffer assignment for
everything in between, and an output that reuses a donated argument's buffer (``aliased``) is
counted once. Compiled code and host-side buffers are reported apart and not in the peak.
"""

from __future__ import annotations

import jax

__all__ = ["abstract", "peak_bytes", "program_memory"]

_FIELDS = {
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
    "host_temp_bytes": "host_temp_size_in_bytes",
}


def abstract(tree):
    """``tree`` with every array-like leaf (``shape`` and ``dtype``) as a ``ShapeDtypeStruct``
    (shardings kept when the leaf has one); other leaves unchanged. Allocates nothing."""

    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return x

    return jax.tree.map(leaf, tree)


def peak_bytes(figures: dict) -> int:
    """``arguments + outputs + temporaries − aliased`` of a :func:`program_memory` dict."""
    return (
        figures["argument_bytes"]
        + figures["output_bytes"]
        + figures["temp_bytes"]
        - figures["alias_bytes"]
    )


def program_memory(compiled) -> dict[str, int]:
    """Byte counts of a compiled program (``jax.jit(f).lower(...).compile()``).

    Returns:
      ``{"argument_bytes", "output_bytes", "temp_bytes", "alias_bytes",
      "generated_code_bytes", "host_temp_bytes", "peak_bytes"}`` (ints).

    Raises:
      ValueError: the backend gives no memory analysis for this program.
    """
    stats = compiled.memory_analysis()
    if isinstance(stats, list | tuple):  # older JAX: one entry per device program
        stats = stats[0] if stats else None
    if stats is None:
        raise ValueError(
            "this backend returned no memory analysis for the compiled program; compile it on "
            "the CPU or a GPU backend (jax.jit(f).lower(...).compile())"
        )
    figures = {name: int(getattr(stats, attr, 0) or 0) for name, attr in _FIELDS.items()}
    figures["peak_bytes"] = peak_bytes(figures)
    return figures
