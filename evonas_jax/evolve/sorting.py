"""Vectorised non-dominated sorting and crowding distance (NSGA-II, Deb et al. 2002), in JAX.

All objectives are MINIMISED. Everything here is pure jnp, `jit`- and `vmap`-able, with static
shapes: the sort builds the (n, n) domination matrix once and peels fronts in a `while_loop`
(O(n^2) memory, O(n^2 * num_fronts) work), which at NSGA-II population sizes (<= a few hundred)
is far cheaper than any host round-trip.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def dominates(fitness: jax.Array, violation: jax.Array | None = None) -> jax.Array:
  """Constraint-domination matrix D[i, j] = "i dominates j".

  Without constraints: i is no worse in every objective and strictly better in one (Pareto).
  With `violation` (Deb's constraint domination): a feasible point (violation <= 0) dominates
  every infeasible one; of two infeasible points the one with the smaller violation dominates;
  two feasible points compare by Pareto dominance.

  Args:
    fitness: (n, M) objectives, minimised.
    violation: optional (n,) total constraint violation, >= 0 (0 = feasible).
  Returns:
    (n, n) bool.
  """
  f = jnp.asarray(fitness)
  le = jnp.all(f[:, None, :] <= f[None, :, :], axis=-1)
  lt = jnp.any(f[:, None, :] < f[None, :, :], axis=-1)
  pareto = le & lt
  if violation is None:
    return pareto
  v = jnp.maximum(jnp.asarray(violation, f.dtype), 0.0)
  feas = v <= 0
  both_feas = feas[:, None] & feas[None, :]
  i_feas_j_not = feas[:, None] & ~feas[None, :]
  both_infeas = ~feas[:, None] & ~feas[None, :]
  return (both_feas & pareto) | i_feas_j_not | (both_infeas & (v[:, None] < v[None, :]))


def non_dominated_rank(fitness: jax.Array, violation: jax.Array | None = None) -> jax.Array:
  """Front index of every point (0 = non-dominated), by iterative front peeling.

  Args:
    fitness: (n, M) objectives, minimised.
    violation: optional (n,) constraint violation (see `dominates`).
  Returns:
    (n,) int32 ranks; rank k points are dominated only by points of rank < k.
  """
  dom = dominates(fitness, violation)
  n = dom.shape[0]
  dom_i = dom.astype(jnp.int32)
  # count[j] = number of still-unassigned points that dominate j.
  count0 = jnp.sum(dom_i, axis=0)

  def cond(carry):
    _, unassigned, _, _ = carry
    return jnp.any(unassigned)

  def body(carry):
    rank, unassigned, count, k = carry
    front = unassigned & (count == 0)
    rank = jnp.where(front, k, rank)
    unassigned = unassigned & ~front
    # Removing the front lowers the dominator count of everything it dominated.
    count = count - jnp.sum(jnp.where(front[:, None], dom_i, 0), axis=0)
    return rank, unassigned, count, k + 1

  rank0 = jnp.full((n,), n, jnp.int32)
  rank, _, _, _ = jax.lax.while_loop(
      cond, body, (rank0, jnp.ones((n,), bool), count0, jnp.int32(0)))
  return rank


def crowding_distance(fitness: jax.Array, rank: jax.Array) -> jax.Array:
  """Crowding distance of every point within its own front.

  For each objective, points of a front are sorted by that objective (ties keep index order);
  the two boundary points get +inf, interior points get (f[next] - f[prev]) / (f_max - f_min)
  of their front, and the distances are summed over objectives. An objective that is constant
  over a front contributes 0 to its interior points. Fronts of one or two points are all +inf.

  Args:
    fitness: (n, M) objectives.
    rank: (n,) int front index per point (any integer labels work; equal label = same front).
  Returns:
    (n,) float32 crowding distances.
  """
  f = jnp.asarray(fitness, jnp.float32)
  rank = jnp.asarray(rank, jnp.int32)
  n, m = f.shape

  def one_objective(fm):
    # Lexicographic (rank, f_m, index) order from two stable argsorts.
    o1 = jnp.argsort(fm, stable=True)
    o2 = jnp.argsort(rank[o1], stable=True)
    order = o1[o2]
    fs, rs = fm[order], rank[order]
    first = jnp.concatenate([jnp.array([True]), rs[1:] != rs[:-1]])
    last = jnp.concatenate([rs[1:] != rs[:-1], jnp.array([True])])
    # Sorted within a front, so min / max of the front sit at its first / last position.
    seg = jnp.cumsum(first) - 1
    fmin = jax.ops.segment_min(fs, seg, num_segments=n)[seg]
    fmax = jax.ops.segment_max(fs, seg, num_segments=n)[seg]
    span = fmax - fmin
    prev = jnp.concatenate([fs[:1], fs[:-1]])
    nxt = jnp.concatenate([fs[1:], fs[-1:]])
    d = jnp.where(span > 0, (nxt - prev) / jnp.where(span > 0, span, 1.0), 0.0)
    d = jnp.where(first | last, jnp.inf, d)
    return jnp.zeros((n,), jnp.float32).at[order].set(d)

  return jnp.sum(jax.vmap(one_objective, in_axes=1)(f), axis=0)


def _row_hashes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two 32-bit hashes per row of x (n, G) (float32 or int32): equal rows hash equal, exactly
  (integer arithmetic on the bit patterns, wrapping mod 2^32, no float rounding)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating)
                                               else jnp.int32), jnp.uint32)
  bits = bits ^ (bits >> 15)   # mix the high (exponent) bits into the low ones
  g = x.shape[1]
  # Fixed odd multipliers (any odd constants work; these come from a seeded generator).
  rng = np.random.default_rng(20261201)
  c = rng.integers(1, 2 ** 31, size=(2, g), dtype=np.int64) * 2 + 1
  h = [jnp.sum(bits * jnp.asarray(ci.astype(np.uint32)), axis=1, dtype=jnp.uint32) for ci in c]
  return h[0], h[1]


def duplicate_mask(x: jax.Array) -> jax.Array:
  """(n,) bool: row i equals some earlier row j < i (the first copy is not a duplicate).

  x: (n, G). Every flagged row is verified equal to an earlier one gene by gene, so there are
  no false positives. Candidates come from a 64-bit row hash: the earliest j < i with the same
  hash is checked, so a duplicate is missed only if a *different* earlier row shares its 64-bit
  hash (probability < n^2 / 2^65). That replaces the lexicographic sort over all G genes
  (measured 0.52 ms at n = 192, G = 30 on XLA:CPU, whose sort comparator chains one comparison
  per gene) and the (n, n, G) pairwise test by an (n, n) test of two integers.
  """
  n = x.shape[0]
  h1, h2 = _row_hashes(x)
  same = (h1[:, None] == h1[None, :]) & (h2[:, None] == h2[None, :])
  earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]     # j < i
  cand = same & earlier
  j = jnp.argmax(cand, axis=1)                                   # earliest candidate
  return jnp.any(cand, axis=1) & jnp.all(x == x[j], axis=1)


def rank_and_crowding_order(key: jax.Array, fitness: jax.Array,
                            violation: jax.Array | None = None,
                            penalise: jax.Array | None = None):
  """Survival order of NSGA-II: rank ascending, then crowding descending, ties at random.

  Args:
    key: PRNG key for tie-breaking (NSGA-II picks at random among equal (rank, crowding)).
    fitness: (n, M); violation: optional (n,).
    penalise: optional (n,) bool; these points (e.g. duplicates) go after all others.
  Returns:
    (order (n,) int32 best first, rank (n,) int32, crowding (n,) float32).
  """
  rank = non_dominated_rank(fitness, violation)
  crowd = crowding_distance(fitness, rank)
  n = rank.shape[0]
  perm = jax.random.permutation(key, n)
  pen = jnp.zeros((n,), jnp.int32) if penalise is None else penalise.astype(jnp.int32)
  # Lexsort of the shuffled points by (penalty, rank, -crowding), then shuffled position (the
  # random tie-break; lax.sort itself is not guaranteed stable). The last key is primary.
  sub = jnp.lexsort((jnp.arange(n), -crowd[perm], rank[perm], pen[perm]))
  return perm[sub], rank, crowd
