"""Length buckets and padding: how data of any size maps onto a few fixed program shapes.

Every compiled program's shapes come from configured sizes and these buckets only, never from
the data itself: a batch of prompts of lengths 23, 31 and 40 runs in a ``[B, 64]`` program, and
so does the next batch of lengths 50 and 60. The rule (:func:`bucket_length`): the next power of
two, at least ``minimum`` (8), up to 128; then the next multiple of 128. Explicit buckets (an int
step or a list of sizes) override it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_MIN_BUCKET", "bucket_length", "pad_ids"]

DEFAULT_MIN_BUCKET = 8


def bucket_length(
    n: int, buckets: int | Sequence[int] | None = None, *, minimum: int = DEFAULT_MIN_BUCKET
) -> int:
    """Round a length up to its bucket.

    Args:
      n: a length >= 1.
      buckets: None (default rule: powers of two ≥ ``minimum`` up to 128, then multiples of
        128); an int ``m``: the next multiple of ``m``; a sequence: its smallest entry ``>= n``.
      minimum: smallest bucket of the default rule.

    Returns:
      The bucketed length (``>= n``).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"bucket_length needs an int length >= 1, got {n!r}")
    n = int(n)
    if buckets is None:
        n = max(n, int(minimum))
        if n <= 128:
            return 1 << (n - 1).bit_length()
        return -(-n // 128) * 128
    if isinstance(buckets, numbers.Integral) and not isinstance(buckets, bool):
        if buckets < 1:
            raise ValueError(f"an int bucket size must be >= 1, got {buckets!r}")
        return -(-n // int(buckets)) * int(buckets)
    fitting = [int(b) for b in buckets if int(b) >= n]
    if not fitting:
        raise ValueError(
            f"length {n} exceeds every bucket in {tuple(buckets)}; add a larger bucket"
        )
    return min(fitting)


def pad_ids(rows: Sequence[Sequence[int]], length: int, *, left: bool, pad_id: int = 0):
    """Pad token-id lists into ``ids [B, length]`` and ``mask [B, length]`` (int32 NumPy).

    Args:
      rows: ``B`` id lists, each at most ``length`` long (a longer one is an error: nothing is
        silently cut).
      length: the padded width.
      left: pad on the left (prompts, so the last real token sits in the last slot) or right.
      pad_id: filler id.
    """
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        r = np.asarray(r, np.int32).reshape(-1)
        n = len(r)
        if n > length:
            raise ValueError(f"row {i} has {n} tokens, more than the pad length {length}")
        if n == 0:
            continue
        sl = slice(length - n, length) if left else slice(0, n)
        ids[i, sl] = r
        mask[i, sl] = 1
    return ids, mask
