"""A script of ``benchmarks/`` loaded as a module, for the tests of its pieces (the scripts are
not a package, so they are loaded from their path)."""

from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a freshly executed module named ``name``."""
    path = os.path.join(ROOT, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
