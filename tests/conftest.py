"""Test-session settings.

XLA's LLVM backend optimisation is turned down: it roughly halves compile time, which dominates
this suite (tiny models, many distinct programs), and does not change what the tests assert (every
comparison is between programs compiled under the same flags, or against PyTorch with a stated
tolerance). Set ``XLA_FLAGS`` yourself to override.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests are hermetic: no persistent compilation cache unless a test turns one on itself.
os.environ.setdefault("NABLA_JAX_CACHE_DIR", "off")


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module.

    Each XLA:CPU executable keeps memory mappings for its code; a test worker that compiles
    thousands of distinct programs would otherwise pass Linux's per-process limit
    (``vm.max_map_count``, 65530 by default) and crash inside the compiler. Modules share few
    programs, so little is recompiled.
    """
    yield
    import jax

    jax.clear_caches()
    gc.collect()
