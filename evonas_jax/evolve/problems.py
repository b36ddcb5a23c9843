"""Multi-objective test problems with known Pareto fronts: ZDT1, ZDT2 (Zitzler, Deb & Thiele
2000) and DTLZ2 (Deb, Thiele, Laumanns & Zitzler 2002). All minimised, pure jnp, batched.

Each problem gives its box bounds, a vectorised objective (n, G) -> (n, M), points on the true
front, and the exact hypervolume of the continuous true front for a reference point.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Problem:
  """A box-constrained multi-objective problem.

  Attributes:
    name: registry name.
    num_vars, num_objectives: G and M.
    lower, upper: scalar bounds shared by every variable.
    objective: (n, G) float -> (n, M) float32, minimised.
    front: num_points -> (num_points, M) numpy points on the true Pareto front.
    true_hypervolume: reference point (M,) -> exact hypervolume of the continuous true front.
    ref_point: the reference point used by tests and benchmarks (1.1 x the nadir point).
  """
  name: str
  num_vars: int
  num_objectives: int
  lower: float
  upper: float
  objective: Callable
  front: Callable
  true_hypervolume: Callable
  ref_point: tuple


def _zdt_g(x):
  return 1.0 + 9.0 * jnp.mean(x[:, 1:], axis=1)


def zdt1_objective(x):
  """ZDT1: f1 = x1, f2 = g (1 - sqrt(f1 / g)), g = 1 + 9 mean(x2..xn). Front: f2 = 1 - sqrt(f1)."""
  x = jnp.asarray(x, jnp.float32)
  f1 = x[:, 0]
  g = _zdt_g(x)
  return jnp.stack([f1, g * (1.0 - jnp.sqrt(f1 / g))], axis=1)


def zdt2_objective(x):
  """ZDT2: as ZDT1 with f2 = g (1 - (f1 / g)^2). Front (non-convex): f2 = 1 - f1^2."""
  x = jnp.asarray(x, jnp.float32)
  f1 = x[:, 0]
  g = _zdt_g(x)
  return jnp.stack([f1, g * (1.0 - (f1 / g) ** 2)], axis=1)


def dtlz2_objective(x, num_objectives: int = 3):
  """DTLZ2: g = sum_{i >= M} (x_i - 0.5)^2, f_j = (1 + g) prod cos(.) sin(.). Front: unit sphere."""
  x = jnp.asarray(x, jnp.float32)
  m = num_objectives
  theta = x[:, :m - 1] * (jnp.pi / 2)
  g = jnp.sum((x[:, m - 1:] - 0.5) ** 2, axis=1)
  # theta is in [0, pi/2], so cos/sin are >= 0; in float32 cos(pi/2) = -4.4e-8, and that sign
  # error makes far-off points with large (1 + g) *better* in f_j, i.e. dominance-resistant.
  cos, sin = jnp.clip(jnp.cos(theta), 0.0, 1.0), jnp.clip(jnp.sin(theta), 0.0, 1.0)
  fs = []
  for j in range(m):
    # f_j uses cos of the first m-1-j angles, then sin of the next one (none for j = 0).
    v = jnp.prod(cos[:, :m - 1 - j], axis=1)
    if j > 0:
      v = v * sin[:, m - 1 - j]
    fs.append((1.0 + g) * v)
  return jnp.stack(fs, axis=1)


def _front_2d(curve):
  def front(num_points: int) -> np.ndarray:
    f1 = np.linspace(0.0, 1.0, num_points)
    return np.stack([f1, curve(f1)], axis=1)
  return front


def _hv_2d_curve(integral_of_curve):
  """Exact HV of a decreasing front f2 = c(f1), f1 in [0, 1], c(0) = 1, c(1) = 0, ref >= (1, 1):
  the box minus the area under the curve."""
  def hv(ref) -> float:
    r1, r2 = (float(r) for r in ref)
    if r1 < 1 or r2 < 1:
      raise ValueError(f"closed-form hypervolume needs ref >= (1, 1), got {ref}")
    return r1 * r2 - integral_of_curve
  return hv


def _dtlz2_front(num_points: int) -> np.ndarray:
  """Points on the positive unit sphere (Fibonacci-like lattice in the two angles)."""
  k = int(math.ceil(math.sqrt(num_points)))
  a, b = np.meshgrid(np.linspace(0, 1, k), np.linspace(0, 1, k))
  x = np.stack([a.ravel(), b.ravel()], 1)[:num_points]
  x = np.concatenate([x, np.full((len(x), 1), 0.5)], 1)
  return np.asarray(dtlz2_objective(x, 3), np.float64)


def _dtlz2_hv(ref) -> float:
  """The dominated part of the box [0, ref] is the box minus the unit ball's positive octant."""
  r = np.asarray(ref, np.float64)
  if r.shape != (3,) or np.any(r < 1):
    raise ValueError(f"closed-form DTLZ2 hypervolume needs a 3-D ref >= 1, got {ref}")
  return float(np.prod(r) - math.pi / 6)


PROBLEMS = {
    "zdt1": Problem("zdt1", 30, 2, 0.0, 1.0, zdt1_objective, _front_2d(lambda f: 1 - np.sqrt(f)),
                    _hv_2d_curve(1.0 / 3.0), (1.1, 1.1)),
    "zdt2": Problem("zdt2", 30, 2, 0.0, 1.0, zdt2_objective, _front_2d(lambda f: 1 - f ** 2),
                    _hv_2d_curve(2.0 / 3.0), (1.1, 1.1)),
    "dtlz2": Problem("dtlz2", 12, 3, 0.0, 1.0, dtlz2_objective, _dtlz2_front, _dtlz2_hv,
                     (1.1, 1.1, 1.1)),
}


def get_problem(name: str) -> Problem:
  """Returns a registered problem: one of PROBLEMS ("zdt1", "zdt2", "dtlz2")."""
  if name not in PROBLEMS:
    raise ValueError(f"unknown problem {name!r}; allowed: {sorted(PROBLEMS)}")
  return PROBLEMS[name]
