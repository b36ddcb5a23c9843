"""Deterministic, stratified holdout splits (validation out of train, etc.)."""

from __future__ import annotations

import numpy as np

# Seed of the validation split carved out of train. Fixed on purpose: the
# validation set must be identical across runs, hosts and machines, or
# validation numbers (and NAS decisions based on them) are not comparable.
VAL_SPLIT_SEED = 20240229


def resolve_holdout_size(size: int | float, n: int, *, field: str = "val_size") -> int:
    """Turns `size` (an example count, or a fraction in (0, 1)) into a count.

    Raises:
      ValueError: naming `field` when the size is negative, not a number, or
        leaves fewer than one example on the kept side.
    """
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise ValueError(f"{field} must be an int (examples) or a float fraction in (0, 1); got {size!r}")
    if isinstance(size, (float, np.floating)) and not float(size).is_integer():
        if not 0.0 < size < 1.0:
            raise ValueError(f"{field} as a fraction must be in (0, 1); got {size!r}")
        count = int(round(float(size) * n))
    else:
        count = int(size)
    if count < 0:
        raise ValueError(f"{field} must be >= 0; got {size!r}")
    if count >= n:
        raise ValueError(f"{field}={size!r} leaves no examples: the split only has {n} examples")
    return count


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices 0..N-1 into (keep, holdout) with per-class proportions kept.

    Each class contributes round(size * class_fraction) examples (largest
    remainder, so the total is exactly `size`), picked by a permutation drawn
    from `seed`. The result depends only on (labels, size, seed).

    Args:
      labels: int array (N,).
      size: number of holdout examples, 0 <= size < N.
      seed: seed of the permutation.

    Returns:
      (keep, holdout): sorted int64 index arrays, disjoint, together 0..N-1,
      with shapes (N - size,) and (size,).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 <= size < n:
        raise ValueError(f"holdout size must be in [0, {n}); got {size}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (size / n)
    alloc = np.floor(exact).astype(np.int64)
    # Largest remainder; ties broken by class order so the result is stable.
    remainder = size - int(alloc.sum())
    order = np.lexsort((classes, -(exact - alloc)))
    alloc[order[:remainder]] += 1
    rng = np.random.default_rng(seed)
    holdout = []
    for cls, k in zip(classes, alloc):
        members = np.flatnonzero(labels == cls)
        holdout.append(rng.permutation(members)[:k])
    holdout = np.sort(np.concatenate(holdout)).astype(np.int64) if holdout else np.zeros(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[holdout] = False
    return np.flatnonzero(mask).astype(np.int64), holdout
