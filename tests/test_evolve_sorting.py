"""Non-dominated sort, crowding distance and hypervolume vs independent naive references."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from evonas_jax.evolve import (crowding_distance, hypervolume, hypervolume_2d, hypervolume_3d,
                               non_dominated_rank)
from evonas_jax.evolve.sorting import dominates, rank_and_crowding_order

# Fixed padded sizes keep one compile per shape across hypothesis examples.
N_PAD = 24
_rank = jax.jit(non_dominated_rank)
_crowd = jax.jit(crowding_distance)


def naive_dominates(a, b, va=0.0, vb=0.0):
  if va > 0 or vb > 0:
    if va <= 0:
      return True
    if vb <= 0:
      return False
    return va < vb
  return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def naive_rank(f, v=None):
  """Deb's fast-non-dominated-sort, written as plainly as possible in Python."""
  n = len(f)
  v = np.zeros(n) if v is None else v
  rank = [None] * n
  remaining = set(range(n))
  k = 0
  while remaining:
    front = [i for i in remaining
             if not any(naive_dominates(f[j], f[i], v[j], v[i]) for j in remaining if j != i)]
    for i in front:
      rank[i] = k
    remaining -= set(front)
    k += 1
  return np.array(rank)


def naive_crowding(f, rank):
  n, m = f.shape
  d = np.zeros(n)
  for r in np.unique(rank):
    idx = np.where(rank == r)[0]
    for j in range(m):
      order = idx[np.argsort(f[idx, j], kind="stable")]
      span = f[order[-1], j] - f[order[0], j]
      d[order[0]] = d[order[-1]] = np.inf
      for t in range(1, len(order) - 1):
        if span > 0:
          d[order[t]] += (f[order[t + 1], j] - f[order[t - 1], j]) / span
  return d


# Small integer grids produce many ties and exact duplicates.
fronts = st.integers(1, 3).flatmap(lambda m: st.lists(
    st.lists(st.integers(0, 4), min_size=m, max_size=m), min_size=N_PAD, max_size=N_PAD))


@settings(max_examples=40, deadline=None)
@given(fronts, st.booleans())
def test_rank_matches_bruteforce(rows, constrained):
  f = np.array(rows, np.float32)
  v = None
  if constrained:
    v = np.maximum(np.arange(N_PAD) % 5 - 2.0, 0).astype(np.float32)   # ties in violation too
  got = np.asarray(_rank(f, v) if v is not None else _rank(f))
  np.testing.assert_array_equal(got, naive_rank(f, v))


@settings(max_examples=40, deadline=None)
@given(fronts)
def test_crowding_matches_naive(rows):
  f = np.array(rows, np.float32)
  rank = naive_rank(f)
  got = np.asarray(_crowd(f, rank))
  np.testing.assert_allclose(got, naive_crowding(f.astype(np.float64), rank), rtol=1e-6)


def test_crowding_continuous_random():
  f = np.random.default_rng(0).normal(size=(N_PAD, 3)).astype(np.float32)
  rank = naive_rank(f)
  np.testing.assert_allclose(np.asarray(_crowd(f, rank)), naive_crowding(f, rank), rtol=1e-5)


def test_constraint_domination_hand_case():
  f = np.array([[0, 0], [1, 1], [5, 5], [3, 3]], np.float32)
  v = np.array([0.0, 0.0, 0.5, 0.2], np.float32)
  d = np.asarray(dominates(f, v))
  assert d[0, 1] and d[1, 2] and d[1, 3] and d[3, 2] and not d[2, 3] and not d[1, 0]
  np.testing.assert_array_equal(np.asarray(_rank(f, v)), [0, 1, 3, 2])


def test_survival_order_rank_then_crowding():
  # Front 0: three points (two boundary = inf), front 1: one point.
  f = np.array([[0, 2], [1, 1], [2, 0], [2, 2], [0.5, 1.8]], np.float32)
  order, rank, crowd = rank_and_crowding_order(jax.random.key(0), f)
  rank, order = np.asarray(rank), np.asarray(order)
  np.testing.assert_array_equal(rank, naive_rank(f))
  assert set(order[:2]) == {0, 2}            # boundary points first (inf crowding)
  assert order[-1] == 3                       # the only dominated-by-many point last
  penal = np.array([True, False, False, False, False])
  order2, _, _ = rank_and_crowding_order(jax.random.key(0), f, penalise=jnp.asarray(penal))
  assert np.asarray(order2)[-1] == 0


def test_vmap_rank():
  f = np.random.default_rng(1).integers(0, 4, (3, N_PAD, 2)).astype(np.float32)
  got = np.asarray(jax.vmap(non_dominated_rank)(f))
  for b in range(3):
    np.testing.assert_array_equal(got[b], naive_rank(f[b]))


# ------------------------------------------------------------------ hypervolume
def inclusion_exclusion_hv(p, ref):
  """Exact HV of a union of boxes [p_i, ref] by inclusion-exclusion (2^n terms; n <= 10)."""
  p = np.asarray(p, np.float64)
  total = 0.0
  for k in range(1, len(p) + 1):
    for sub in itertools.combinations(range(len(p)), k):
      corner = p[list(sub)].max(axis=0)
      total += (-1) ** (k + 1) * np.prod(np.maximum(ref - corner, 0))
  return total


def test_hypervolume_hand_cases():
  assert hypervolume_2d([[1, 2], [2, 1]], [3, 3]) == pytest.approx(3.0)
  assert hypervolume_2d([[1, 2], [2, 1], [2.5, 2.5]], [3, 3]) == pytest.approx(3.0)  # dominated
  assert hypervolume_2d([[4, 0]], [3, 3]) == 0.0                                 # beyond ref
  assert hypervolume_3d([[0, 0, 0]], [1, 2, 3]) == pytest.approx(6.0)
  # Boxes [0,2]x[1,2]x[1,2] (2) and [1,2]x[0,2]x[0,2] (4) overlap in [1,2]^3 (1).
  assert hypervolume_3d([[0, 1, 1], [1, 0, 0]], [2, 2, 2]) == pytest.approx(2 + 4 - 1)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 3), st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3),
                                   min_size=1, max_size=8))
def test_hypervolume_matches_inclusion_exclusion(m, rows):
  p = np.array(rows)[:, :m]
  ref = np.full(m, 1.2)
  fn = hypervolume_2d if m == 2 else hypervolume_3d
  assert fn(p, ref) == pytest.approx(inclusion_exclusion_hv(p, ref), rel=1e-9, abs=1e-12)


def test_hypervolume_3d_monte_carlo():
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 1, (40, 3))
  p /= np.linalg.norm(p, axis=1, keepdims=True)   # a spherical front
  ref = np.array([1.1, 1.1, 1.1])
  s = rng.uniform(0, 1.1, (400_000, 3))
  dominated = np.zeros(len(s), bool)
  for q in p:
    dominated |= np.all(s >= q, axis=1)
  mc = dominated.mean() * 1.1 ** 3
  se = np.sqrt(dominated.mean() * (1 - dominated.mean()) / len(s)) * 1.1 ** 3
  assert abs(hypervolume(p, ref) - mc) < 4 * se


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=4, max_size=4), min_size=N_PAD,
                max_size=N_PAD))
def test_duplicate_mask_matches_bruteforce(rows):
  from evonas_jax.evolve import sorting
  x = np.array(rows, np.int32)
  want = [any((x[j] == x[i]).all() for j in range(i)) for i in range(len(x))]
  np.testing.assert_array_equal(np.asarray(jax.jit(sorting.duplicate_mask)(x)), want)
  # Real genomes too (the hash works on float bit patterns): equal rows, and rows that differ
  # in one gene by one ulp, which a float-rounding hash could merge.
  xf = (x.astype(np.float32) / 3.0)
  xf[1::5, 0] = np.nextafter(xf[1::5, 0], np.float32(9))
  want_f = [any((xf[j] == xf[i]).all() for j in range(i)) for i in range(len(xf))]
  np.testing.assert_array_equal(np.asarray(jax.jit(sorting.duplicate_mask)(xf)), want_f)
