"""Old import paths of modules that moved in the layer layout, kept for one release.

``import nabla_jax.refine`` (or ``from nabla_jax.dto_config import DTOConfig``) still works: the
finder below answers only for the names in :data:`MOVED`, imports the module at its new path,
registers it under the old name too, and warns once with a ``DeprecationWarning`` naming the new
path. Every other import is left to Python's own finders.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED", "combined", "install"]

#: old module path -> new module path
MOVED = {
    "nabla_jax.cli": "nabla_jax.app.cli",
    "nabla_jax.cli_checks": "nabla_jax.app.cli_checks",
    "nabla_jax.config_io": "nabla_jax.app.config_io",
    "nabla_jax.demo": "nabla_jax.app.demo",
    "nabla_jax.bundled": "nabla_jax.app.bundled",
    "nabla_jax.evaluation": "nabla_jax.app.evaluation",
    "nabla_jax.revisions": "nabla_jax.app.revisions",
    "nabla_jax.stats": "nabla_jax.app.stats",
    "nabla_jax.dto_config": "nabla_jax.functional.dto_config",
    "nabla_jax.ste": "nabla_jax.functional.ste",
    "nabla_jax.objectives": "nabla_jax.functional.objectives",
    "nabla_jax.refine": "nabla_jax.functional.refine",
    "nabla_jax.article": "nabla_jax.functional.article",
    "nabla_jax.distributed": "nabla_jax.runtime.distributed",
    "nabla_jax.compilation_cache": "nabla_jax.runtime.compilation_cache",
    "nabla_jax.profiling": "nabla_jax.runtime.profiling",
    "nabla_jax.buckets": "nabla_jax.runtime.buckets",
    "nabla_jax.templates": "nabla_jax.text.templates",
    "nabla_jax.vocab": "nabla_jax.text.vocab",
    "nabla_jax.oracle": "nabla_jax.tasks.oracle",
    "nabla_jax.tasks.tokenizer": "nabla_jax.text.tokenizer",
    # The decode loop by step (a module split in two or more: its names from each part).
    "nabla_jax.decoding.indexing": "nabla_jax.runtime.rows",
    "nabla_jax.decoding.explore": (
        "nabla_jax.decoding.steps.select",
        "nabla_jax.decoding.steps.refine",
        "nabla_jax.decoding.steps.resample",
    ),
}


def combined(name: str, parts: tuple[str, ...]) -> types.ModuleType:
    """A module named ``name`` holding the public names (``__all__``) of every module in
    ``parts``: the old path of a module that was split."""
    module = types.ModuleType(name, f"Moved: its names now live in {', '.join(parts)}.")
    names = []
    for part in parts:
        mod = importlib.import_module(part)
        for n in mod.__all__:
            setattr(module, n, getattr(mod, n))
            names.append(n)
    module.__all__ = names
    return module


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str | tuple[str, ...]):
        self.new = new

    def create_module(self, spec):
        if isinstance(self.new, tuple):
            return combined(spec.name, self.new)
        return importlib.import_module(self.new)

    def exec_module(self, module):  # already executed at its new path
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        where = new if isinstance(new, str) else " and ".join(new)
        warnings.warn(
            f"{fullname} moved to {where}; the old path works until the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (it answers only for :data:`MOVED`)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
