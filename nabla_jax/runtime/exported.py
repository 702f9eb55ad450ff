"""Serialized programs: trace and lower a jitted function once, and let later processes skip both.

The persistent XLA cache (:mod:`nabla_jax.runtime.compilation_cache`) saves a second process the
XLA compile, but not the Python tracing and the lowering to StableHLO that come before it — several
seconds for the decode loop. A :class:`ProgramStore` exports a function with ``jax.export`` the
first time it meets a key, writes the serialized program to disk, and in every later process reads
it back and calls it: no tracing of the function and no lowering of its body (the XLA compile of
the deserialized module is then a persistent-cache hit).

* Key: a SHA-256 of the program's name, the caller's ``static`` description (static arguments,
  settings), the flattened arguments' tree (paths and node data) with every leaf's shape and
  dtype, the versions of JAX and jaxlib, the backend and device kind, and a fingerprint of
  nabla-jax's own source files — so a program is never reused after any of them changes.
* Files: ``<XLA cache directory>-exported/<name>-<key>.jax``, written to a temporary file and
  renamed (two processes at once, or a kill, never leave a half-written program to be read); an
  unreadable file is reported, removed and exported again.
* Off (the caller uses its jitted function) when the persistent XLA cache is off.

Typed PRNG keys cannot be serialized: such argument leaves travel as their key data and are
wrapped again inside the program.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from nabla_jax.runtime import compilation_cache

__all__ = ["SUFFIX", "ProgramStore", "default_store", "source_fingerprint"]

SUFFIX = ".jax"
_PACKAGE = Path(__file__).resolve().parent.parent
# The process's stores by directory: like JAX's own in-memory caches, they only save work.
_STORES: dict = {}


def source_fingerprint(root: Path = _PACKAGE) -> str:
    """SHA-256 over every ``.py`` file of the package (relative path and bytes), sorted."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def default_store() -> ProgramStore | None:
    """The store beside the persistent XLA cache in use (one per directory and process, so a
    second decoder reuses the programs the first one read), or None when that cache is off."""
    xla = compilation_cache.directory()
    if not xla:
        return None
    path = Path(os.fspath(xla).rstrip("/\\") + "-exported")
    if path not in _STORES:
        _STORES[path] = ProgramStore(path)
    return _STORES[path]


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class ProgramStore:
    """Exported programs under ``directory``, and those already read in this process.

    ``log`` records, per :meth:`call`, ``(name, how)`` with ``how`` one of ``"exported"`` (traced,
    lowered and written), ``"loaded"`` (read from disk) or ``"memory"`` (read earlier in this
    process) — what the tests check.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.log: list[tuple[str, str]] = []
        self._programs: dict[str, Callable] = {}
        self._fingerprint: str | None = None

    def key(self, name: str, static: str, leaves: Sequence, treedef) -> str:
        """The program's key (hex SHA-256); see the module doc."""
        if self._fingerprint is None:
            self._fingerprint = source_fingerprint()
        device = jax.devices()[0]
        h = hashlib.sha256()
        for part in (name, static, str(treedef), jax.__version__, jax.lib.__version__,
                     device.platform, device.device_kind, self._fingerprint):  # fmt: skip
            h.update(part.encode())
            h.update(b"\0")
        for x in leaves:
            h.update(f"{tuple(x.shape)}:{x.dtype};".encode())
        return h.hexdigest()

    def call(self, name: str, fn: Callable, args: tuple, *, static: str, out_tree,
             donate: Sequence[int] = ()):  # fmt: skip
        """``fn(*args)`` through the exported program of this key (exported on first use).

        ``fn`` must be a pure function of ``args`` (a tuple of pytrees of arrays) whose result has
        the tree structure ``out_tree``; ``static`` describes everything else the program depends
        on. ``donate``: positions in ``args`` whose buffers the program may reuse.
        """
        leaves, treedef = jax.tree.flatten(args)
        keyed = [_is_key(x) for x in leaves]
        impls = [jax.random.key_impl(x) if k else None for x, k in zip(leaves, keyed)]
        flat = [jax.random.key_data(x) if k else x for x, k in zip(leaves, keyed)]
        key = self.key(name, static + repr(impls), flat, treedef)
        program = self._programs.get(key)
        if program is not None:
            self.log.append((name, "memory"))
        else:
            exported, how = self._load(name, key), "loaded"
            if exported is None:
                exported, how = self._export(name, key, fn, flat, treedef, impls), "exported"
            counts = [len(jax.tree.leaves(a)) for a in args]
            starts = [sum(counts[:i]) for i in range(len(args))]
            donated = tuple(j for i in donate for j in range(starts[i], starts[i] + counts[i]))
            program = jax.jit(exported.call, donate_argnums=donated)
            self._programs[key] = program
            self.log.append((name, how))
        # Committed to one device, as the program's results are: the wrapper's jit then sees the
        # same argument shardings on every call (numpy inputs or the uncommitted results of
        # another jit would compile it a second time, as long again as the first).
        flat = jax.device_put(flat, jax.devices()[0])
        return jax.tree.unflatten(out_tree, program(*flat))

    def _path(self, name: str, key: str) -> Path:
        return self.directory / f"{name}-{key}{SUFFIX}"

    def _load(self, name: str, key: str):
        path = self._path(name, key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return jax.export.deserialize(bytearray(blob))
        except Exception as e:  # a damaged file: say so, drop it, export again
            warnings.warn(f"nabla-jax: {path} is unreadable ({type(e).__name__}: {e}); "
                          "removing it and exporting the program again", stacklevel=3)  # fmt: skip
            path.unlink(missing_ok=True)
            return None

    def _export(self, name, key, fn, flat, treedef, impls):
        def flat_fn(*xs):
            xs = [jax.random.wrap_key_data(x, impl=i) if i is not None else x
                  for x, i in zip(xs, impls)]  # fmt: skip
            return jax.tree.leaves(fn(*jax.tree.unflatten(treedef, xs)))

        flat_fn.__name__ = name
        shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat]
        exported = jax.export.export(jax.jit(flat_fn))(*shapes)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(exported.serialize())
            os.replace(tmp, self._path(name, key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return exported
