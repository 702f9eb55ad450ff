"""The persistent XLA compilation cache: compiled programs survive the process.

Importing nabla-jax changes nothing in JAX's configuration. The command line, ``NablaDecoder``
and the benchmarks turn JAX's persistent compilation cache on for themselves
(:func:`use_default`), so a second run of the same decode (a new process) loads its programs
from disk instead of compiling them again; a library user calls :func:`enable` to have it too.

* Directory: ``$NABLA_JAX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/nabla-jax/xla`` (by default
  ``~/.cache/nabla-jax/xla``).
* Off: ``NABLA_JAX_CACHE_DIR=off`` (or ``none`` / ``0`` / empty), :func:`disable` (then
  :func:`use_default` leaves it off for the rest of the process), the CLI's
  ``--no-compilation-cache`` or ``compilation_cache: false`` in a run config.
* A cache the user configured for JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``) wins: nabla-jax leaves it alone.

Programs that compile in under 0.2 s are not written (small eager operations would only fill the
directory). Entries are keyed by JAX on the program, the JAX/XLA versions and the device, so a
stale entry is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = [
    "ENV_VAR",
    "MIN_COMPILE_SECONDS",
    "default_directory",
    "directory",
    "disable",
    "enable",
    "use_default",
]

ENV_VAR = "NABLA_JAX_CACHE_DIR"
MIN_COMPILE_SECONDS = 0.2
_OFF = ("", "0", "off", "none", "false", "no")
# Whether disable() was called in this process (then use_default() keeps the cache off).
_DISABLED = {"by_call": False}


def default_directory() -> Path | None:
    """Where nabla-jax caches programs by default; None when ``NABLA_JAX_CACHE_DIR`` says off."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nabla-jax" / "xla"


def directory() -> str | None:
    """The directory JAX caches compiled programs in now (None: no persistent cache)."""
    return jax.config.jax_compilation_cache_dir


def enable(path: str | os.PathLike | None = None, *, override: bool = False) -> str | None:
    """Turn the persistent cache on in ``path`` (default :func:`default_directory`).

    Does nothing when JAX already has a cache directory (the user's own setting wins) unless
    ``override``. Returns the directory in use (None when off).
    """
    if directory() and not override:
        return directory()
    target = Path(path).expanduser() if path is not None else default_directory()
    if target is None:
        return None
    target.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return os.fspath(target)


def disable() -> None:
    """Turn the persistent cache off for this process (:func:`use_default` then leaves it off)."""
    _DISABLED["by_call"] = True
    jax.config.update("jax_compilation_cache_dir", None)


def use_default() -> str | None:
    """What the command line, ``NablaDecoder`` and the benchmarks call: :func:`enable` in the
    default directory, unless :func:`disable` was called in this process (or the environment
    says off, or JAX already has a directory of the user's). Returns the directory in use."""
    if _DISABLED["by_call"]:
        return directory()
    return enable()
