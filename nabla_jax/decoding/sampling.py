"""Keyed sampling: temperature, top-k and top-p (nucleus) filters over logits ``[..., V]``.

Every function is pure and ``jax.jit``-able with ``temperature`` / ``top_k`` / ``top_p`` given
as Python numbers or as (traced) arrays broadcastable to the batch shape ``[...]`` — one compiled
program serves every setting. Filtered-out entries are ``-inf``. Filters apply in the order
temperature → top-k → top-p (the Hugging Face ``generate`` order).

Semantics:

* ``temperature == 0`` means greedy: the filtered distribution is one-hot at
  ``argmax(logits)`` (first index on ties) and :func:`sample_token` returns that argmax.
* ``top_k == 0`` is off; ``top_k >= V`` keeps everything. Ties with the k-th largest logit are
  all kept.
* ``top_p >= 1`` is off. Otherwise, sorting probabilities in descending order, a token is kept
  when the cumulative probability *before* it is ``< top_p``: the smallest set reaching
  ``top_p``, including the token that crosses it; the top-1 token is always kept. Tokens tied
  with the least probable kept token are kept too (so the result never depends on sort order).

Concrete bad values (``temperature < 0``, ``top_k < 0``, ``top_p`` outside ``(0, 1]``) raise
``ValueError`` before compute; traced values cannot be checked — validate them with
:class:`SamplingConfig` upstream.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SamplingConfig",
    "SamplingParams",
    "SamplingProgram",
    "apply_temperature",
    "filter_logits",
    "sample_token",
    "top_k_filter",
    "top_p_filter",
]


# --------------------------------------------------------------------------------------------
# Validation (concrete values only)
# --------------------------------------------------------------------------------------------


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array, or None if it is traced (unknowable until run time)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def _check_logits(logits: Any) -> jax.Array:
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape [..., V] with V >= 1, got {logits.shape}.")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}.")
    return logits


def _check_temperature(temperature: Any) -> None:
    t = _concrete(temperature)
    if t is not None and (np.any(np.isnan(t)) or np.any(t < 0)):
        raise ValueError(
            f"temperature must be >= 0 (0 = greedy), got {temperature!r}: pass a non-negative "
            "temperature."
        )


def _check_top_k(top_k: Any) -> None:
    k = _concrete(top_k)
    if k is None:
        return
    if not np.issubdtype(k.dtype, np.integer) or k.dtype == np.bool_:
        raise TypeError(f"top_k must be an integer (0 = off), got {top_k!r}.")
    if np.any(k < 0):
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k!r}.")


def _check_top_p(top_p: Any) -> None:
    p = _concrete(top_p)
    if p is not None and (np.any(np.isnan(p)) or np.any(p <= 0) or np.any(p > 1)):
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}.")


def _per_row(param: Any, logits: jax.Array, dtype) -> jax.Array:
    """``param`` (scalar or broadcastable to ``logits.shape[:-1]``) as ``[..., 1]``."""
    param = jnp.asarray(param, dtype=dtype)
    try:
        param = jnp.broadcast_to(param, logits.shape[:-1])
    except ValueError as err:
        raise ValueError(
            f"A sampling parameter of shape {param.shape} does not broadcast to the batch shape "
            f"{logits.shape[:-1]} of logits {logits.shape}: pass a scalar or one value per row."
        ) from err
    return param[..., None]


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


def _greedy_logits(logits: jax.Array) -> jax.Array:
    """Keep only the first argmax of each row: ``[..., V]`` with ``-inf`` elsewhere."""
    top = jnp.argmax(logits, axis=-1)
    keep = jnp.arange(logits.shape[-1]) == top[..., None]
    return jnp.where(keep, logits, -jnp.inf)


# Pure kernels (parameters already shaped [..., 1]); jitted so eager calls run as one program.


@jax.jit
def _temperature_kernel(logits: jax.Array, t: jax.Array) -> jax.Array:
    greedy = t == 0
    scaled = logits / jnp.where(greedy, jnp.ones_like(t), t)
    return jnp.where(greedy, _greedy_logits(logits), scaled)


@jax.jit
def _top_k_kernel(logits: jax.Array, k: jax.Array) -> jax.Array:
    vocab = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(sorted_desc, jnp.clip(k - 1, 0, vocab - 1), axis=-1)
    keep = (k == 0) | (logits >= kth)
    return jnp.where(keep, logits, -jnp.inf)


@jax.jit
def _top_p_kernel(logits: jax.Array, p: jax.Array) -> jax.Array:
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    cum_before = jnp.cumsum(probs, axis=-1) - probs
    kept_sorted = (cum_before < p).at[..., 0].set(True)
    # Least probable kept logit = threshold; everything >= it survives (ties included).
    threshold = jnp.min(jnp.where(kept_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    keep = (p >= 1) | (logits >= threshold)
    return jnp.where(keep, logits, -jnp.inf)


@jax.jit
def _sample_kernel(key, logits, t, k, p) -> jax.Array:
    filtered = _top_p_kernel(_top_k_kernel(_temperature_kernel(logits, t), k), p)
    drawn = jax.random.categorical(key, filtered, axis=-1)
    greedy = jnp.argmax(logits, axis=-1)
    return jnp.where(t[..., 0] == 0, greedy, drawn).astype(jnp.int32)


def apply_temperature(logits: jax.Array, temperature: Any) -> jax.Array:
    """``logits / temperature``; temperature 0 keeps only the argmax (greedy).

    Args:
      logits: ``[..., V]`` float.
      temperature: scalar or ``[...]``, >= 0.

    Returns:
      ``[..., V]`` scaled logits (``-inf`` off the argmax where temperature is 0).
    """
    logits = _check_logits(logits)
    _check_temperature(temperature)
    return _temperature_kernel(logits, _per_row(temperature, logits, logits.dtype))


def top_k_filter(logits: jax.Array, k: Any) -> jax.Array:
    """Keep the ``k`` largest logits of each row (and any ties with the k-th); 0 = off.

    Sort-based, so ``k`` may be traced.

    Args:
      logits: ``[..., V]`` float.
      k: int scalar or ``[...]``, >= 0.

    Returns:
      ``[..., V]`` with filtered-out entries set to ``-inf``.
    """
    logits = _check_logits(logits)
    _check_top_k(k)
    return _top_k_kernel(logits, _per_row(k, logits, jnp.int32))


def top_p_filter(logits: jax.Array, p: Any) -> jax.Array:
    """Nucleus filter: keep the smallest top set whose probability reaches ``p``; 1 = off.

    A token is kept when the cumulative probability of the tokens sorted before it (descending)
    is ``< p``, so the token that crosses ``p`` and the top-1 token are always kept; ties with
    the least probable kept logit are kept too.

    Args:
      logits: ``[..., V]`` float (may already hold ``-inf``).
      p: float scalar or ``[...]`` in ``(0, 1]``.

    Returns:
      ``[..., V]`` with filtered-out entries set to ``-inf``.
    """
    logits = _check_logits(logits)
    _check_top_p(p)
    return _top_p_kernel(logits, _per_row(p, logits, logits.dtype))


def _check_all(logits, temperature, top_k, top_p):
    logits = _check_logits(logits)
    _check_temperature(temperature)
    _check_top_k(top_k)
    _check_top_p(top_p)
    t = _per_row(temperature, logits, logits.dtype)
    k = _per_row(top_k, logits, jnp.int32)
    p = _per_row(top_p, logits, logits.dtype)
    return logits, t, k, p


def filter_logits(
    logits: jax.Array, temperature: Any = 1.0, top_k: Any = 0, top_p: Any = 1.0
) -> jax.Array:
    """Temperature, then top-k, then top-p.

    Args:
      logits: ``[..., V]`` float.
      temperature: scalar or ``[...]``, >= 0 (0 = greedy: one-hot at the argmax).
      top_k: int scalar or ``[...]``, >= 0 (0 = off).
      top_p: scalar or ``[...]`` in ``(0, 1]`` (1 = off).

    Returns:
      ``[..., V]`` filtered logits; ``softmax`` of it is the sampling distribution.
    """
    logits, t, k, p = _check_all(logits, temperature, top_k, top_p)
    return _top_p_kernel(_top_k_kernel(_temperature_kernel(logits, t), k), p)


def sample_token(
    key: jax.Array,
    logits: jax.Array,
    temperature: Any = 1.0,
    top_k: Any = 0,
    top_p: Any = 1.0,
) -> jax.Array:
    """Draw one token id per row from the filtered distribution.

    Args:
      key: a ``jax.random`` key (one key serves the whole batch; rows draw independently).
      logits: ``[..., V]`` float.
      temperature, top_k, top_p: as in :func:`filter_logits`; temperature 0 returns
        ``argmax(logits)`` (first index on ties).

    Returns:
      ``[...]`` int32 token ids.
    """
    logits, t, k, p = _check_all(logits, temperature, top_k, top_p)
    return _sample_kernel(key, logits, t, k, p)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings, validated on construction (hashable: usable as a static jit arg).

    Attributes:
      temperature: >= 0, finite; 0 = greedy.
      top_k: int >= 0; 0 = off.
      top_p: in (0, 1]; 1 = off.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        t, k, p = self.temperature, self.top_k, self.top_p
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise ValueError(
                f"SamplingConfig.temperature must be a finite number >= 0 (0 = greedy), got {t!r}."
            )
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"SamplingConfig.top_k must be an int >= 0 (0 = off), got {k!r}.")
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {p!r}.")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_k", int(k))
        object.__setattr__(self, "top_p", float(p))

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature == 0

    def filter(self, logits: jax.Array) -> jax.Array:
        """:func:`filter_logits` with these settings: ``[..., V]`` -> ``[..., V]``."""
        return filter_logits(logits, self.temperature, self.top_k, self.top_p)

    def sample(self, key: jax.Array, logits: jax.Array) -> jax.Array:
        """:func:`sample_token` with these settings: ``[..., V]`` -> ``[...]`` int32."""
        return sample_token(key, logits, self.temperature, self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class SamplingProgram:
    """The static part of sampling: greedy, and which filters exist at all."""

    greedy: bool
    use_top_k: bool
    use_top_p: bool

    @classmethod
    def of(cls, cfg: SamplingConfig) -> SamplingProgram:
        return cls(cfg.greedy, cfg.top_k > 0, cfg.top_p < 1)


class SamplingParams(NamedTuple):
    """The run-time part of sampling (scalars): temperature, top_k, top_p."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array

    @classmethod
    def of(cls, cfg: SamplingConfig) -> SamplingParams:
        return cls(np.float32(cfg.temperature), np.int32(cfg.top_k), np.float32(cfg.top_p))
