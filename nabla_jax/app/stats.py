"""Uncertainty of accuracy figures: bootstrap confidence intervals over problems and paired
comparisons of two methods on the same problems."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_comparison", "paired_difference_ci"]


def bootstrap_ci(
    correct: Sequence[bool], *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy (a fraction) of ``correct`` (one bool per
    problem): problems are resampled with replacement ``n_boot`` times. Deterministic in
    ``seed``. Raises ``ValueError`` for no problems or a level outside (0, 1)."""
    x = np.asarray(correct, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one problem")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def paired_comparison(base: dict, other: dict) -> dict:
    """``{fixed, broken, unchanged_correct, unchanged_wrong, n}`` of ``other`` against ``base``
    (each ``{problem_id: correct}``) on the problems both have: fixed = wrong under ``base``,
    right under ``other``; broken = the reverse."""
    ids = sorted(set(base) & set(other))
    out = dict(fixed=0, broken=0, unchanged_correct=0, unchanged_wrong=0, n=len(ids))
    for i in ids:
        a, b = bool(base[i]), bool(other[i])
        key = "fixed" if b and not a else "broken" if a and not b else None
        key = key or ("unchanged_correct" if a else "unchanged_wrong")
        out[key] += 1
    return out


def paired_difference_ci(
    base: dict, other: dict, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``other``'s accuracy minus ``base``'s (fractions; each
    ``{problem_id: correct}``), resampling the problems both have — the same problem in both
    arms of every draw, so the interval is that of the paired difference. Raises ``ValueError``
    when they share no problem or for a level outside (0, 1)."""
    ids = sorted(set(base) & set(other))
    if not ids:
        raise ValueError("paired_difference_ci needs at least one problem in both")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = np.asarray([float(bool(other[i])) - float(bool(base[i])) for i in ids])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)
