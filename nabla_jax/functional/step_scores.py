"""Aggregating per-step reward scores ``[B, S]`` (a process reward model's step ends) to one
reward per row ``[B]``.

Every function takes ``scores [B, S]`` and ``mask [B, S]`` (1 for a real step, 0 for an unused
slot: :func:`nabla_jax.models.prm.step_end_positions` writes both) and ignores masked slots
whatever they hold. A row with no step gets ``empty`` (default 0.0). All are pure, jit-able and
differentiable in ``scores``; the soft minimum's temperature may be a traced run-time value.

* ``last``: the last real step's score (the outcome as the PRM sees it).
* ``min``: the weakest step (a solution is as good as its worst step).
* ``product``: the product of the step scores (for probabilities: every step correct).
* ``mean``: the average step score.
* ``soft_min``: ``−τ·log((1/n)·Σ exp(−s_i/τ))`` over the ``n`` real steps — always between
  the minimum and the mean, tending to the minimum as ``τ → 0`` (within ``τ·log n``) and to the
  mean as ``τ → ∞``; its gradient weights step ``i`` by ``softmax(−s/τ)_i``, so DTO can push on
  the weak steps without the hard minimum's one-step gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "AGGREGATIONS",
    "aggregate_steps",
    "last_step",
    "mean_steps",
    "min_step",
    "product_steps",
    "soft_min_steps",
]

AGGREGATIONS: tuple[str, ...] = ("last", "min", "product", "mean", "soft_min")


def _prepare(scores, mask):
    scores, mask = jnp.asarray(scores), jnp.asarray(mask)
    if scores.ndim != 2 or mask.shape != scores.shape:
        raise ValueError(
            f"scores and mask must both be [B, S], got {scores.shape} and {mask.shape}"
        )
    scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
    return scores, mask > 0


def _finish(value, valid, empty):
    return jnp.where(jnp.any(valid, axis=1), value, jnp.asarray(empty, value.dtype))


def last_step(scores, mask, *, empty=0.0):
    """Score of each row's rightmost real step: ``[B]``."""
    scores, valid = _prepare(scores, mask)
    idx = jnp.arange(scores.shape[1])
    last = jnp.max(jnp.where(valid, idx, -1), axis=1)
    picked = jnp.take_along_axis(scores, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
    return _finish(picked, valid, empty)


def min_step(scores, mask, *, empty=0.0):
    """Smallest real step score per row: ``[B]``."""
    scores, valid = _prepare(scores, mask)
    return _finish(jnp.min(jnp.where(valid, scores, jnp.inf), axis=1), valid, empty)


def product_steps(scores, mask, *, empty=0.0):
    """Product of the real step scores per row: ``[B]``."""
    scores, valid = _prepare(scores, mask)
    return _finish(jnp.prod(jnp.where(valid, scores, 1.0), axis=1), valid, empty)


def mean_steps(scores, mask, *, empty=0.0):
    """Mean of the real step scores per row: ``[B]``."""
    scores, valid = _prepare(scores, mask)
    n = jnp.sum(valid, axis=1)
    total = jnp.sum(jnp.where(valid, scores, 0.0), axis=1)
    return _finish(total / jnp.maximum(n, 1), valid, empty)


def _check_temperature(temperature):
    if temperature is None:
        raise ValueError("soft_min needs a temperature > 0 (e.g. temperature=0.1)")
    t = jnp.asarray(temperature)
    if t.ndim != 0:
        raise ValueError(f"temperature must be a scalar, got shape {t.shape}")
    if not isinstance(t, jax.core.Tracer) and not (float(t) > 0 and jnp.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {float(t)}")
    return t


def soft_min_steps(scores, mask, temperature, *, empty=0.0):
    """``−τ·log((1/n)·Σ_i exp(−s_i/τ))`` over each row's ``n`` real steps: ``[B]``.

    Args:
      scores, mask: ``[B, S]``.
      temperature: ``τ > 0``, a Python number or a (possibly traced) scalar array.
    """
    t = _check_temperature(temperature)
    scores, valid = _prepare(scores, mask)
    t = t.astype(scores.dtype)
    n = jnp.maximum(jnp.sum(valid, axis=1), 1).astype(scores.dtype)
    # Evaluated as c − τ·log1p(mean(expm1(−(s − c)/τ))) with c the row's minimum (a constant
    # for the gradient; the value is the same for any c): every term is in (−1, 0], so neither
    # a small τ (exp overflow) nor a large one (log(n) − log(n) cancellation) loses precision.
    c = jax.lax.stop_gradient(jnp.min(jnp.where(valid, scores, jnp.inf), axis=1))
    c = jnp.where(jnp.isfinite(c), c, 0.0)
    safe = jnp.where(valid, scores, c[:, None])  # masked slots never reach exp (nor its grad)
    x = jnp.where(valid, jnp.expm1(-(safe - c[:, None]) / t), 0.0)
    value = c - t * jnp.log1p(jnp.sum(x, axis=1) / n)
    return _finish(value, valid, empty)


def aggregate_steps(scores, mask, how: str, *, temperature=None, empty=0.0):
    """One reward per row from step scores ``[B, S]`` with ``mask [B, S]``: ``[B]``.

    Args:
      how: one of :data:`AGGREGATIONS`.
      temperature: the soft minimum's ``τ`` (``how="soft_min"`` only; required there).
      empty: the value of a row with no real step.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"step aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
    if how == "soft_min":
        return soft_min_steps(scores, mask, temperature, empty=empty)
    if temperature is not None:
        raise ValueError(f"temperature applies to the soft_min aggregation only, not {how!r}")
    fn = {"last": last_step, "min": min_step, "product": product_steps, "mean": mean_steps}[how]
    return fn(scores, mask, empty=empty)
