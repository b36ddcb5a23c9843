"""Exact hypervolume indicator (minimisation) for small fronts, in float64 numpy.

`hypervolume(points, ref)` is the Lebesgue measure of the region dominated by `points` and
bounded by the reference point `ref`. 2-D uses the sweep (sort by f1, add one rectangle per
improving point, O(n log n)); M >= 3 slices along the last objective (HSO: Zitzler 2001, While
et al. 2006): between consecutive f_M values the dominated cross-section is the (M-1)-D
hypervolume of the points already passed, giving O(n^2 log n) for 3-D, fine for populations of a
few hundred. Points that do not strictly dominate `ref` contribute nothing and are dropped.
"""
from __future__ import annotations

import numpy as np


def _prepare(points, ref) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(points, np.float64)
  r = np.asarray(ref, np.float64).reshape(-1)
  if p.ndim != 2 or p.shape[1] != r.shape[0]:
    raise ValueError(f"points must be (n, M) with M = len(ref) = {r.shape[0]}, got {p.shape}")
  if not np.all(np.isfinite(r)):
    raise ValueError(f"ref must be finite, got {r}")
  p = p[np.all(np.isfinite(p), axis=1)]
  return p[np.all(p < r, axis=1)], r


def hypervolume_2d(points, ref) -> float:
  """Exact 2-D hypervolume by a sweep over f1. points (n, 2), ref (2,)."""
  p, r = _prepare(points, ref)
  if r.shape[0] != 2:
    raise ValueError(f"hypervolume_2d needs 2 objectives, got {r.shape[0]}")
  return _hv2(p, r)


def _hv2(p: np.ndarray, r: np.ndarray) -> float:
  if len(p) == 0:
    return 0.0
  p = p[np.lexsort((p[:, 1], p[:, 0]))]   # f1 ascending, ties by f2 ascending
  hv, best = 0.0, r[1]
  for f1, f2 in p:
    if f2 < best:   # dominated points (f2 >= best) add nothing
      hv += (r[0] - f1) * (best - f2)
      best = f2
  return float(hv)


def _hv(p: np.ndarray, r: np.ndarray) -> float:
  m = r.shape[0]
  if len(p) == 0:
    return 0.0
  if m == 1:
    return float(r[0] - p[:, 0].min())
  if m == 2:
    return _hv2(p, r)
  p = p[np.argsort(p[:, -1], kind="stable")]
  z = np.append(p[:, -1], r[-1])
  hv = 0.0
  for i in range(len(p)):
    thick = z[i + 1] - z[i]
    if thick > 0:
      hv += thick * _hv(p[:i + 1, :-1], r[:-1])
  return float(hv)


def hypervolume_3d(points, ref) -> float:
  """Exact 3-D hypervolume by slicing along f3. points (n, 3), ref (3,)."""
  p, r = _prepare(points, ref)
  if r.shape[0] != 3:
    raise ValueError(f"hypervolume_3d needs 3 objectives, got {r.shape[0]}")
  return _hv(p, r)


def hypervolume(points, ref) -> float:
  """Exact hypervolume for any number of objectives (slicing; exponential in M, use M <= 4)."""
  p, r = _prepare(points, ref)
  return _hv(p, r)
