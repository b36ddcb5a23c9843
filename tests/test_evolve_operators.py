"""Genome operators: validity on both spaces (hypothesis), structure of each operator, and
statistics of mutation / sampling against closed forms or a naive numpy formula."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from evonas_jax.evolve import NSGA2, GenomeSpec
from evonas_jax.evolve import operators as ops
from evonas_jax.space import get_space

SPACES = {name: get_space(name, "tiny") for name in ("evonas", "hybrid")}
SPECS = {name: GenomeSpec.from_space(sp) for name, sp in SPACES.items()}
BATCH = 32


def _params(name, **kw):
  return NSGA2(8, SPECS[name], 2).default_params.replace(**kw)


@functools.lru_cache(maxsize=None)
def _variation(name):
  """jit(vmap(crossover -> mutate -> repair)) on BATCH parent pairs, one compile per space."""
  spec = SPECS[name]

  def one(key, a, b, params):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    c1, c2 = ops.crossover(k1, spec, a, b, params)
    c1 = ops.repair(k4, spec, ops.mutate(k2, spec, c1, params))
    c2 = ops.repair(k5, spec, ops.mutate(k3, spec, c2, params, force=True))
    return c1, c2

  return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), zero_stage=st.booleans(),
       mut=st.sampled_from([0.1, 1.0]), bitp=st.sampled_from([None, 0.5, 1.0]))
def test_variation_always_valid(name, seed, zero_stage, mut, bitp):
  sp, spec = SPACES[name], SPECS[name]
  rng = np.random.default_rng(seed)
  a, b = sp.sample(seed, BATCH), sp.sample(seed + 1, BATCH)
  if zero_stage:   # parents with empty stages in the same place -> children need repair
    for s in range(sp.num_stages):
      if rng.random() < 0.5:
        a[:, sp.depth_slice(s)] = 0
        b[:, sp.depth_slice(s)] = 0
  kw = {"mutation_prob": mut}
  if bitp is not None:
    kw["bit_flip_prob"] = bitp
  keys = jax.random.split(jax.random.key(seed), BATCH)
  c1, c2 = _variation(name)(keys, jnp.asarray(a), jnp.asarray(b), _params(name, **kw))
  for g in np.concatenate([np.asarray(c1), np.asarray(c2)]):
    sp.validate(g)
  assert np.all(np.asarray(spec.is_valid(c1))) and np.all(np.asarray(spec.is_valid(c2)))


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
def test_initial_population_valid_and_uniform_over_nonempty_patterns(name):
  sp, spec = SPACES[name], SPECS[name]
  pop = np.asarray(NSGA2(96, spec, 2).initial_population(jax.random.key(0)))
  for g in pop:
    sp.validate(g)
  assert len({tuple(r) for r in pop}) == len(pop)
  # Stage 1 has 2 bits: 3 non-empty patterns, each with probability 1/3 (rejection sampling).
  x = np.asarray(spec.sample(jax.random.key(1), 6000))
  sl = sp.depth_slice(0)
  code = x[:, sl.start] + 2 * x[:, sl.start + 1]
  counts = np.bincount(code, minlength=4)
  assert counts[0] == 0
  chi2 = np.sum((counts[1:] - 2000) ** 2 / 2000)
  assert chi2 < 13.8   # chi-square, 2 dof, p = 0.001
  # Choice genes: uniform over their values (mlp_ratio has 6).
  mlp = np.bincount(x[:, 0], minlength=6)
  assert np.sum((mlp - 1000) ** 2 / 1000) < 20.5   # 5 dof, p = 0.001


def test_two_point_crossover_swaps_one_contiguous_segment():
  spec = SPECS["hybrid"]
  idx = np.asarray(spec.choice_idx)
  a = jnp.zeros(spec.length, jnp.int32)
  b = jnp.ones(spec.length, jnp.int32)
  f = jax.jit(jax.vmap(lambda k: ops.two_point_crossover(k, a, b, spec.choice_idx)))
  c1, c2 = f(jax.random.split(jax.random.key(0), 500))
  c1, c2 = np.asarray(c1), np.asarray(c2)
  np.testing.assert_array_equal(c1 + c2, 1)                        # genes exchanged, not made up
  bits = np.setdiff1d(np.arange(spec.length), idx)
  assert np.all(c1[:, bits] == 0)                                  # depth bits untouched
  seg = c1[:, idx]
  starts = np.argmax(seg, 1)
  lengths = seg.sum(1)
  assert np.all(lengths >= 1) and np.all(lengths <= len(idx) - 2)  # strictly inside the list
  for row, s, n in zip(seg, starts, lengths):
    assert row[s:s + n].all() and row.sum() == n                   # one contiguous run
  assert seg[:, 0].sum() == 0 and seg[:, -1].sum() == 0            # cut points in 1..n-1


def test_uniform_bit_crossover_and_bit_flip_rates():
  spec = SPECS["evonas"]
  bit = list(spec.bit_idx)
  a = jnp.zeros(spec.length, jnp.int32)
  b = jnp.ones(spec.length, jnp.int32)
  keys = jax.random.split(jax.random.key(2), 4000)
  c1, c2 = jax.jit(jax.vmap(lambda k: ops.uniform_bit_crossover(k, a, b, spec.bit_idx, 0.5)))(keys)
  c1 = np.asarray(c1)
  assert abs(c1[:, bit].mean() - 0.5) < 0.01                     # 72,000 bits, sd 0.002
  assert np.all(c1[:, list(spec.choice_idx)] == 0)
  y = np.asarray(jax.jit(jax.vmap(lambda k: ops.bit_flip(k, a, spec.bit_idx, 1 / 18)))(keys))
  assert abs(y[:, bit].mean() - 1 / 18) < 0.004                  # sd 0.00085


def test_repair_sets_exactly_one_bit_in_empty_stages_only():
  sp, spec = SPACES["evonas"], SPECS["evonas"]
  g = sp.sample(0).copy()
  g[sp.depth_slice(1)] = 0
  g[sp.depth_slice(2)] = 0
  out = np.asarray(jax.vmap(lambda k: ops.repair(k, spec, jnp.asarray(g)))(
      jax.random.split(jax.random.key(0), 200)))
  for s in range(4):
    sl = sp.depth_slice(s)
    if s in (1, 2):
      assert np.all(out[:, sl].sum(1) == 1)
      # the repaired position is uniform-ish: every block of the stage gets chosen
      assert len(np.unique(np.argmax(out[:, sl], 1))) == sl.stop - sl.start
    else:
      assert np.all(out[:, sl] == g[sl])
  others = [i for i in range(len(g)) if not any(sp.depth_slice(s).start <= i < sp.depth_slice(s).stop for s in (1, 2))]
  assert np.all(out[:, others] == g[others])


def _numpy_pm(u, x, lo, hi, eta):
  """Polynomial mutation of one variable written directly from Deb & Goyal (1996)."""
  d1, d2 = (x - lo) / (hi - lo), (hi - x) / (hi - lo)
  p = 1 / (eta + 1)
  if u < 0.5:
    dq = (2 * u + (1 - 2 * u) * (1 - d1) ** (eta + 1)) ** p - 1
  else:
    dq = 1 - (2 * (1 - u) + 2 * (u - 0.5) * (1 - d2) ** (eta + 1)) ** p
  return min(max(x + dq * (hi - lo), lo), hi)


@pytest.mark.parametrize("x0,eta", [(0.5, 20.0), (0.05, 20.0), (2.0, 1.0)])
def test_polynomial_mutation_matches_numpy_formula_in_distribution(x0, eta):
  lo, hi = 0.0, (1.0 if x0 < 1 else 5.0)
  keys = jax.random.split(jax.random.key(0), 20000)
  pm = lambda k: ops.polynomial_mutation(k, jnp.full((1,), x0), jnp.full((1,), lo),
                                         jnp.full((1,), hi), eta, 1.0)
  y = np.asarray(jax.jit(jax.vmap(pm))(keys))[:, 0]
  u = np.random.default_rng(0).random(20000)
  ref = np.array([_numpy_pm(v, x0, lo, hi, eta) for v in u])
  from scipy.stats import ks_2samp
  assert ks_2samp(y, ref).pvalue > 1e-3
  assert y.min() >= lo and y.max() <= hi


def test_sbx_children_in_bounds_and_mean_preserving():
  lo, hi = jnp.zeros(4), jnp.ones(4)
  p1 = jnp.array([0.3, 0.4, 0.5, 0.45])
  p2 = jnp.array([0.6, 0.55, 0.5, 0.5])
  keys = jax.random.split(jax.random.key(0), 20000)
  c1, c2 = jax.jit(jax.vmap(lambda k: ops.sbx(k, p1, p2, lo, hi, 15.0, 1.0, 0.5)))(keys)
  c1, c2 = np.asarray(c1), np.asarray(c2)
  assert c1.min() >= 0 and c2.max() <= 1
  # Parents far from the bounds: SBX's spread is nearly symmetric, so children keep the mean.
  np.testing.assert_allclose((c1 + c2).mean(0) / 2, (p1 + p2) / 2, atol=2e-3)
  np.testing.assert_array_equal(c1[:, 2], 0.5)       # equal parents -> no change
  # Exchange probability 0.5: child 1 is the upper child half of the time.
  assert abs((c1[:, 0] > 0.45).mean() - 0.5) < 0.02


def test_mutation_prob_is_per_offspring():
  spec = SPECS["evonas"]
  p = _params("evonas", mutation_prob=0.1, mutation_prob_var=1.0, bit_flip_prob=0.5)
  g = jnp.asarray(SPACES["evonas"].sample(0))
  keys = jax.random.split(jax.random.key(0), 5000)
  y = np.asarray(jax.jit(jax.vmap(lambda k: ops.mutate(k, spec, g, p)))(keys))
  changed = np.any(y != np.asarray(g), axis=1).mean()
  assert abs(changed - 0.1) < 0.015   # with per-gene rates this high, "mutated" ~ "changed"


# ------------------------------------------------------------------ relaxed encoding
@functools.lru_cache(maxsize=None)
def _decode(name):
  from evonas_jax.evolve.relaxed import decode_relaxed
  return jax.jit(lambda z: decode_relaxed(SPECS[name], z))


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_relaxed_decode_always_valid(name, seed):
  sp, spec = SPACES[name], SPECS[name]
  rng = np.random.default_rng(seed)
  z = rng.uniform(-0.5, 1.5, (BATCH, spec.length)).astype(np.float32)   # CMA-ES leaves the box
  z[: BATCH // 2, list(spec.bit_idx)] = rng.uniform(0, 0.5, (BATCH // 2, spec.num_bits))  # empty
  x = np.asarray(_decode(name)(z))
  for g in x:
    sp.validate(g)
  # An empty stage switches on exactly its bit with the largest z.
  for s in range(sp.num_stages):
    sl = sp.depth_slice(s)
    row = x[0, sl]
    if not (z[0, sl] > 0.5).any():
      assert row.sum() == 1 and np.argmax(row) == np.argmax(z[0, sl])


def test_relaxed_decode_bins_are_equal_width():
  from evonas_jax.evolve.relaxed import decode_relaxed
  spec = SPECS["evonas"]
  z = np.linspace(0, 1, 6001, dtype=np.float32)[:, None].repeat(spec.length, 1)
  x = np.asarray(decode_relaxed(spec, z))
  np.testing.assert_array_equal(np.bincount(x[:-1, 0], minlength=6), [1000] * 6)  # mlp: 6 values
  assert x[-1, 0] == 5 and x[0, 0] == 0


@pytest.mark.parametrize("strategy", ["CMA_ES", "SimpleGA"])
def test_run_relaxed_finds_constrained_optimum(strategy):
  """maximise (sum of choice indices + active depth bits) s.t. sum of choice indices <= 20.
  The optimum is -(20 + 18) = -38 (every bit on, choice indices summing to exactly 20).
  Budget: population 32 x 50 generations; seed 1. Uniform random search with 1,600 samples
  reaches -34 or -35 (measured over 5 seeds), so -36 needs the strategy to work."""
  from evonas_jax.evolve.relaxed import run_relaxed
  sp, spec = SPACES["evonas"], SPECS["evonas"]
  ci, bi = np.asarray(spec.choice_idx), np.asarray(spec.bit_idx)
  fit = lambda g: -(g[:, ci].sum(1) + g[:, bi].sum(1))
  con = lambda g: g[:, ci].sum(1)
  res = run_relaxed(strategy, sp, fit, con, 20, pop=32, generations=50, key=1)
  sp.validate(res.best_genome)
  assert res.feasible and con(res.best_genome[None])[0] <= 20
  assert res.best_fitness == fit(res.best_genome[None])[0]
  assert -38 <= res.best_fitness <= -36
  best = [h["best_fitness"] for h in res.history]
  assert all(a >= b for a, b in zip(best, best[1:]))   # best-so-far is monotone
  with pytest.raises(ValueError, match="unknown evosax strategy"):
    run_relaxed("NoSuchES", sp, fit, con, 20, pop=4, generations=1)
