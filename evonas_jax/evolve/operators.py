"""Genome descriptions and variation operators for NSGA-II (pure jnp, jit/vmap-able).

Two genome kinds:

* integer (`GenomeSpec.from_space`): choice-index genes plus groups of 0/1 depth bits (one group
  per stage, never all zero). Operators follow the official EvoNAS run (research/evonas.md §4,
  pymoo 0.6 semantics): two-point crossover on the choice genes (in genome order), uniform
  bitwise crossover on the bits, polynomial mutation on the choice indices treated as reals in
  [0, n_choices - 1] then rounded, independent bit flips, and repair of an empty group by setting
  one random bit.
* real (`GenomeSpec.real`): box-bounded floats; SBX crossover and polynomial mutation (Deb).

Operator formulas are written from Deb & Agrawal (1995, SBX), Deb & Goyal (1996, polynomial
mutation) and the published NSGA-II description; no code is copied from pymoo.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.evolve.sorting import duplicate_mask

# --------------------------------------------------------------------------------------- spec


@dataclasses.dataclass(frozen=True, eq=False)
class GenomeSpec:
  """Static description of a genome (held by the strategy; never traced).

  Attributes:
    kind: "int" or "real".
    lower, upper: (G,) inclusive bounds (int genes: 0 and n_choices - 1; bits: 0 and 1).
    choice_idx: positions of the choice / real genes (crossed over and mutated as numbers).
    bit_groups: tuple of position tuples, one per stage; each group must keep >= 1 bit set.
    names: optional gene names (error messages).
  """
  kind: str
  lower: np.ndarray
  upper: np.ndarray
  choice_idx: tuple[int, ...]
  bit_groups: tuple[tuple[int, ...], ...] = ()
  names: tuple[str, ...] = ()

  def __post_init__(self):
    if self.kind not in ("int", "real"):
      raise ValueError(f"GenomeSpec.kind must be 'int' or 'real', got {self.kind!r}")
    if self.lower.shape != self.upper.shape or self.lower.ndim != 1:
      raise ValueError(f"GenomeSpec lower/upper must be (G,) arrays of equal shape, got "
                       f"{self.lower.shape} and {self.upper.shape}")
    if np.any(self.upper < self.lower):
      bad = int(np.argmax(self.upper < self.lower))
      raise ValueError(f"GenomeSpec upper[{bad}]={self.upper[bad]} < lower[{bad}]={self.lower[bad]}")

  # ------------------------------------------------------------------ constructors
  @classmethod
  def from_space(cls, space) -> "GenomeSpec":
    """Integer genome of an `evonas_jax.space.SearchSpace` (choice genes + per-stage depth bits)."""
    ub = np.asarray(space.upper_bounds, np.int64)   # exclusive bounds
    groups = tuple(tuple(range(space.depth_slice(s).start, space.depth_slice(s).stop))
                   for s in range(space.num_stages))
    bits = {i for g in groups for i in g}
    choice = tuple(i for i in range(space.genome_length) if i not in bits)
    return cls("int", np.zeros(len(ub), np.float32), (ub - 1).astype(np.float32), choice, groups,
               tuple(space.gene_names))

  @classmethod
  def integer(cls, num_choices: Sequence[int], bit_groups: Sequence[Sequence[int]] = ()) -> "GenomeSpec":
    """Generic integer genome: gene i in [0, num_choices[i]); genes in `bit_groups` are 0/1 bits."""
    nc = np.asarray(num_choices, np.int64)
    if nc.ndim != 1 or np.any(nc < 1):
      raise ValueError(f"num_choices must be a 1-D list of counts >= 1, got {num_choices}")
    groups = tuple(tuple(int(i) for i in g) for g in bit_groups)
    bits = {i for g in groups for i in g}
    for i in bits:
      if not 0 <= i < len(nc) or nc[i] != 2:
        raise ValueError(f"bit gene {i} must exist and have num_choices 2, got {num_choices}")
    choice = tuple(i for i in range(len(nc)) if i not in bits)
    return cls("int", np.zeros(len(nc), np.float32), (nc - 1).astype(np.float32), choice, groups)

  @classmethod
  def real(cls, lower, upper) -> "GenomeSpec":
    """Real-valued genome in the box [lower, upper] (arrays or scalars broadcast together)."""
    lo, hi = np.broadcast_arrays(np.asarray(lower, np.float32), np.asarray(upper, np.float32))
    lo, hi = np.array(lo, np.float32).reshape(-1), np.array(hi, np.float32).reshape(-1)
    return cls("real", lo, hi, tuple(range(lo.shape[0])))

  # ------------------------------------------------------------------ derived
  @property
  def length(self) -> int:
    return int(self.lower.shape[0])

  @property
  def dtype(self):
    return jnp.int32 if self.kind == "int" else jnp.float32

  @property
  def num_bits(self) -> int:
    return sum(len(g) for g in self.bit_groups)

  @property
  def bit_idx(self) -> tuple[int, ...]:
    return tuple(i for g in self.bit_groups for i in g)

  # ------------------------------------------------------------------ checks
  def is_valid(self, genomes: jax.Array) -> jax.Array:
    """(..., G) genomes -> (...) bool: in bounds, integral (int kind), no empty bit group."""
    x = jnp.asarray(genomes)
    ok = jnp.all((x >= self.lower) & (x <= self.upper), axis=-1)
    if self.kind == "int":
      ok &= jnp.all(jnp.round(x) == x, axis=-1)
    for g in self.bit_groups:
      ok &= jnp.any(x[..., np.asarray(g)] > 0, axis=-1)
    return ok

  # ------------------------------------------------------------------ sampling
  def sample(self, key: jax.Array, num: int) -> jax.Array:
    """(num, G) uniform valid genomes.

    Choice genes are uniform per gene; each bit group is uniform over its non-empty patterns
    (an integer in [1, 2^d) read as bits), which is exactly the distribution of the official
    "reject samples with an empty stage and redraw".
    """
    k_x, k_b = jax.random.split(key)
    lo, hi = jnp.asarray(self.lower), jnp.asarray(self.upper)
    if self.kind == "real":
      return jax.random.uniform(k_x, (num, self.length), jnp.float32, lo, hi)
    u = jax.random.uniform(k_x, (num, self.length))
    x = jnp.minimum(jnp.floor(u * (hi - lo + 1) + lo), hi).astype(jnp.int32)
    if self.bit_groups:
      sizes = [len(g) for g in self.bit_groups]
      if max(sizes) > 30:
        raise ValueError(f"bit groups of more than 30 bits are not supported, got sizes {sizes}")
      # One draw for every group: code_s uniform in [1, 2^d_s), read as d_s bits.
      codes = jax.random.randint(k_b, (num, len(sizes)), 1, jnp.array([2 ** d for d in sizes]))
      for s, g in enumerate(self.bit_groups):
        bits = (codes[:, s:s + 1] >> jnp.arange(len(g))[None, :]) & 1
        x = x.at[:, np.asarray(g)].set(bits.astype(jnp.int32))
    return x


# --------------------------------------------------------------------------------------- real ops


def sbx(key: jax.Array, p1: jax.Array, p2: jax.Array, lower, upper, eta: float,
        prob_var: float = 0.5, prob_exchange: float = 0.5):
  """Simulated binary crossover with bounds (Deb & Agrawal 1995; Deb's NSGA-II code variant).

  Args:
    p1, p2: (G,) parents. lower, upper: (G,) bounds.
    eta: distribution index (large -> children near parents).
    prob_var: chance each variable is recombined. prob_exchange: chance children swap a variable.
  Returns:
    (c1, c2), each (G,).
  """
  g = p1.shape[-1]
  r_var, u, r_x = jax.random.uniform(key, (3, g))
  lo, hi = jnp.asarray(lower, p1.dtype), jnp.asarray(upper, p1.dtype)
  y1, y2 = jnp.minimum(p1, p2), jnp.maximum(p1, p2)
  delta = y2 - y1
  active = (r_var < prob_var) & (delta > 1e-14)
  safe = jnp.where(delta > 1e-14, delta, 1.0)

  def betaq(beta):
    alpha = 2.0 - beta ** -(eta + 1.0)
    return jnp.where(u <= 1.0 / alpha, (u * alpha) ** (1.0 / (eta + 1.0)),
                     (1.0 / (2.0 - u * alpha)) ** (1.0 / (eta + 1.0)))

  c1 = 0.5 * (y1 + y2 - betaq(1.0 + 2.0 * (y1 - lo) / safe) * delta)
  c2 = 0.5 * (y1 + y2 + betaq(1.0 + 2.0 * (hi - y2) / safe) * delta)
  c1, c2 = jnp.clip(c1, lo, hi), jnp.clip(c2, lo, hi)
  swap = r_x < prob_exchange
  c1, c2 = jnp.where(swap, c2, c1), jnp.where(swap, c1, c2)
  return jnp.where(active, c1, p1), jnp.where(active, c2, p2)


def polynomial_mutation(key: jax.Array, x: jax.Array, lower, upper, eta: float,
                        prob_var: jax.Array | float):
  """Bounded polynomial mutation (Deb & Goyal 1996, the NSGA-II variant with bound-aware deltas).

  Args:
    x: (G,) genome (float). lower, upper: (G,) bounds.
    eta: distribution index. prob_var: per-gene mutation chance (scalar or (G,)).
  Returns:
    (G,) mutated genome, clipped to the bounds.
  """
  g = x.shape[-1]
  r_m, u = jax.random.uniform(key, (2, g))
  lo, hi = jnp.asarray(lower, jnp.float32), jnp.asarray(upper, jnp.float32)
  xf = x.astype(jnp.float32)
  span = hi - lo
  ok = span > 0
  safe = jnp.where(ok, span, 1.0)
  d1, d2 = (xf - lo) / safe, (hi - xf) / safe
  p = 1.0 / (eta + 1.0)
  left = 2.0 * u + (1.0 - 2.0 * u) * (1.0 - d1) ** (eta + 1.0)
  right = 2.0 * (1.0 - u) + 2.0 * (u - 0.5) * (1.0 - d2) ** (eta + 1.0)
  dq = jnp.where(u < 0.5, left ** p - 1.0, 1.0 - right ** p)
  y = jnp.clip(xf + dq * span, lo, hi)
  mutate = (r_m < prob_var) & ok
  return jnp.where(mutate, y, xf)


# --------------------------------------------------------------------------------------- int ops


def two_point_crossover(key: jax.Array, p1: jax.Array, p2: jax.Array, idx: Sequence[int]):
  """Swaps the segment [a, b) of the genes `idx` (in that order) between two parents.

  Cut points a < b are drawn without replacement from 1..len(idx)-1 (a segment strictly inside
  the list, as pymoo's point crossover). With fewer than 3 genes this is a no-op.
  """
  n = len(idx)
  if n < 3:
    return p1, p2
  # Two distinct cut points, uniform over pairs in 1..n-1: a from n-1 values, b from the n-2
  # others (shifted past a).
  a, b = jax.random.randint(key, (2,), 1, jnp.array([n, n - 1]))
  b = jnp.where(b >= a, b + 1, b)
  lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
  j = jnp.arange(n)
  seg = (j >= lo) & (j < hi)
  ii = np.asarray(idx)
  x1, x2 = p1[ii], p2[ii]
  return p1.at[ii].set(jnp.where(seg, x2, x1)), p2.at[ii].set(jnp.where(seg, x1, x2))


def uniform_bit_crossover(key: jax.Array, p1: jax.Array, p2: jax.Array, idx: Sequence[int],
                          prob_swap: float):
  """Swaps each gene in `idx` between the two parents independently with `prob_swap`."""
  if not idx:
    return p1, p2
  ii = np.asarray(idx)
  swap = jax.random.uniform(key, (len(idx),)) < prob_swap
  a, b = p1[ii], p2[ii]
  return p1.at[ii].set(jnp.where(swap, b, a)), p2.at[ii].set(jnp.where(swap, a, b))


def bit_flip(key: jax.Array, x: jax.Array, idx: Sequence[int], prob: jax.Array | float):
  """Flips each bit gene in `idx` independently with probability `prob`."""
  if not idx:
    return x
  ii = np.asarray(idx)
  flip = jax.random.uniform(key, (len(idx),)) < prob
  return x.at[ii].set(jnp.where(flip, 1 - x[ii], x[ii]))


def repair_bits(key: jax.Array, x: jax.Array, groups: Sequence[Sequence[int]]):
  """Sets one uniformly random bit in every all-zero group (the official empty-stage repair)."""
  if not groups:
    return x
  picks = jax.random.randint(key, (len(groups),), 0, jnp.array([len(g) for g in groups]))
  for s, g in enumerate(groups):
    ii = np.asarray(g)
    empty = ~jnp.any(x[ii] > 0)
    pos = jnp.asarray(ii)[picks[s]]
    x = x.at[pos].set(jnp.where(empty, 1, x[pos]))
  return x


# --------------------------------------------------------------------------------------- spec-level


def crossover(key: jax.Array, spec: GenomeSpec, p1: jax.Array, p2: jax.Array, params):
  """Two children from two parents, with probability `params.crossover_prob` (else copies)."""
  k_do, k_a, k_b = jax.random.split(key, 3)
  if spec.kind == "real":
    c1, c2 = sbx(k_a, p1, p2, spec.lower, spec.upper, params.eta_crossover,
                 params.crossover_prob_var, params.crossover_prob_exchange)
  else:
    c1, c2 = two_point_crossover(k_a, p1, p2, spec.choice_idx)
    c1, c2 = uniform_bit_crossover(k_b, c1, c2, spec.bit_idx, params.bit_swap_prob)
  do = jax.random.uniform(k_do) < params.crossover_prob
  return jnp.where(do, c1, p1), jnp.where(do, c2, p2)


def mutate(key: jax.Array, spec: GenomeSpec, x: jax.Array, params, force: bool | jax.Array = False):
  """Mutates one genome with probability `params.mutation_prob` (always when `force`).

  Integer genomes: polynomial mutation of the choice indices as reals in [0, n - 1], rounded,
  per-gene probability `params.mutation_prob_var`; bit flips with `params.bit_flip_prob`.
  Real genomes: polynomial mutation with per-gene probability `params.mutation_prob_var`.
  """
  k_do, k_pm, k_bf = jax.random.split(key, 3)
  pv = params.mutation_prob_var
  do = (jax.random.uniform(k_do) < params.mutation_prob) | force
  if spec.kind == "real":
    y = polynomial_mutation(k_pm, x, spec.lower, spec.upper, params.eta_mutation, pv)
    return jnp.where(do, y, x)
  y = x
  if spec.choice_idx:
    ii = np.asarray(spec.choice_idx)
    yc = polynomial_mutation(k_pm, x[ii], spec.lower[ii], spec.upper[ii], params.eta_mutation, pv)
    y = y.at[ii].set(jnp.round(yc).astype(x.dtype))
  if spec.bit_idx:
    y = bit_flip(k_bf, y, spec.bit_idx, params.bit_flip_prob)
  return jnp.where(do, y, x)


def repair(key: jax.Array, spec: GenomeSpec, x: jax.Array) -> jax.Array:
  """Makes one genome valid: clip to bounds (and round, int kind), fill empty bit groups."""
  if spec.kind == "real":
    return jnp.clip(x, spec.lower, spec.upper)
  x = jnp.clip(jnp.round(x), spec.lower, spec.upper).astype(jnp.int32)
  return repair_bits(key, x, spec.bit_groups)


def duplicates(x: jax.Array, existing: jax.Array) -> jax.Array:
  """(n,) bool: row of x (n, G) equal to a row of `existing` (m, G) or to an earlier row of x."""
  return duplicate_mask(jnp.concatenate([existing.astype(x.dtype), x], axis=0))[existing.shape[0]:]
