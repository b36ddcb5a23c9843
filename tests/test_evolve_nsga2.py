"""NSGA-II strategy: convergence on ZDT1 / ZDT2 / DTLZ2, vmap == loop, constraints, elitism."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.evolve import NSGA2, GenomeSpec, get_problem, hypervolume, minimize
from evonas_jax.space import get_space


@functools.lru_cache(maxsize=None)
def _solver(num_vars, num_objectives, pop, gens):
  """One compile per problem shape; the objective is picked by a traced index (lax.switch), so
  ZDT1 and ZDT2 (both 30 variables, 2 objectives) share a compiled run."""
  names = [n for n in ("zdt1", "zdt2", "dtlz2")
           if (get_problem(n).num_vars, get_problem(n).num_objectives) == (num_vars, num_objectives)]
  fns = [get_problem(n).objective for n in names]
  st = NSGA2(pop, GenomeSpec.real(np.zeros(num_vars), np.ones(num_vars)), num_objectives)
  run = jax.jit(lambda k, which: minimize(st, lambda x: jax.lax.switch(which, fns, x), k, gens)[0])
  return names, run


def _run_problem(name, pop, gens, seed=0):
  pr = get_problem(name)
  names, run = _solver(pr.num_vars, pr.num_objectives, pop, gens)
  state = run(jax.random.key(seed), names.index(name))
  front = np.asarray(state.fitness)[np.asarray(NSGA2.pareto_mask(state))]
  return pr, front


@pytest.mark.parametrize("name,ref", [("zdt1", (1.1, 1.1)), ("zdt2", (1.1, 1.1)),
                                      ("dtlz2", (2.0, 2.0, 2.0))])
def test_hypervolume_within_2_percent_of_true_front(name, ref):
  """Budget: population 96 x 200 generations (19,200 evaluations), seed 0, pymoo-default
  operators (SBX 0.9 / eta 15, PM eta 20 at 1/G per gene); ZDT1/ZDT2 with 30 variables, DTLZ2
  with 3 objectives and 12 variables. True hypervolumes are closed form: ZDT1 1.21 - 1/3,
  ZDT2 1.21 - 2/3 at ref (1.1, 1.1); DTLZ2 8 - pi/6 at ref (2, 2, 2).

  DTLZ2 uses ref 2 because at ref 1.1 no 96-point set gets within 2% of the continuous sphere
  (a 96-point lattice on the true front reaches 0.734 / 0.807 = 91%); its convergence is checked
  directly instead (distance of the front to the unit sphere), and ref 1.1 is compared with
  pymoo in benchmarks/nsga2_vs_pymoo.py. About 15 s on 2 CPU cores.
  """
  pr, front = _run_problem(name, 96, 200)
  hv, true = hypervolume(front, ref), pr.true_hypervolume(ref)
  assert hv <= true + 1e-9                      # sanity: nothing beats the true front
  assert hv >= 0.98 * true, (name, hv, true)
  if name == "dtlz2":
    radius = np.linalg.norm(front, axis=1)
    assert np.median(np.abs(radius - 1)) < 0.01
    assert hypervolume(front, pr.ref_point) > 0.68   # pymoo NSGA-II, same budget: ~0.70


def _int_objectives(x):
  """Two conflicting objectives on an integer genome (sum of genes vs distance to a target)."""
  xf = x.astype(jnp.float32)
  target = jnp.arange(x.shape[1]) % 3
  return jnp.stack([jnp.sum(xf, 1), jnp.sum(jnp.abs(xf - target), 1)], axis=1)


def test_vmap_over_seeds_equals_loop():
  space = get_space("hybrid", "tiny")
  st = NSGA2(16, GenomeSpec.from_space(space), 2)
  run = lambda k: minimize(st, _int_objectives, k, 3)[0]
  keys = jax.random.split(jax.random.key(3), 4)
  batched = jax.jit(jax.vmap(run))(keys)
  run_one = jax.jit(run)
  for i, k in enumerate(keys):
    single = run_one(k)
    np.testing.assert_array_equal(np.asarray(batched.population[i]), np.asarray(single.population))
    np.testing.assert_array_equal(np.asarray(batched.fitness[i]), np.asarray(single.fitness))
    np.testing.assert_array_equal(np.asarray(batched.rank[i]), np.asarray(single.rank))
  # Different seeds give different populations (the test above could not pass by constancy).
  assert not np.array_equal(np.asarray(batched.population[0]), np.asarray(batched.population[1]))


def test_space_search_keeps_valid_distinct_genomes_and_elitism():
  space = get_space("evonas", "tiny")
  st = NSGA2(24, GenomeSpec.from_space(space), 2)
  params = st.default_params
  assert params.crossover_prob == 0.95 and params.mutation_prob == 0.1
  assert params.eta_mutation == 1.0 and params.bit_flip_prob == pytest.approx(1 / 18)
  assert params.mutation_prob_var == pytest.approx(0.1)
  key = jax.random.key(0)
  pop = st.initial_population(key)
  assert pop.dtype == jnp.int32 and pop.shape == (24, space.genome_length)
  state = st.init(key, pop, _int_objectives(pop), params)
  ideal = np.asarray(state.fitness).min(0)
  for gen in range(6):
    x, state = st.ask(jax.random.fold_in(key, 2 * gen), state, params)
    for g in np.asarray(x):
      space.validate(g)
    # Offspring are distinct from each other and from the parents (duplicate elimination).
    both = np.concatenate([np.asarray(state.population), np.asarray(x)])
    assert len({tuple(r) for r in both}) == len(both)
    state, metrics = st.tell(jax.random.fold_in(key, 2 * gen + 1), x, _int_objectives(x), state,
                             params)
    new_ideal = np.asarray(metrics["ideal"])
    assert np.all(new_ideal <= ideal)   # (mu + lambda) survival never loses the best per objective
    ideal = new_ideal
    assert int(state.generation) == gen + 1
  # The stored ranks are the ranks of the surviving population.
  from evonas_jax.evolve import non_dominated_rank
  np.testing.assert_array_equal(np.asarray(state.rank), np.asarray(non_dominated_rank(state.fitness)))


def test_constraint_domination_keeps_feasible_front():
  """ZDT1 with f1 >= 0.4 required: the final front is feasible and respects the bound."""
  pr = get_problem("zdt1")
  st = NSGA2(40, GenomeSpec.real(np.zeros(30), np.ones(30)), 2)
  viol = lambda x: jnp.maximum(0.4 - x[:, 0], 0.0)
  state, _ = jax.jit(lambda k: minimize(st, pr.objective, k, 60, constraint_fn=viol))(
      jax.random.key(1))
  mask = np.asarray(NSGA2.pareto_mask(state))
  assert mask.sum() > 10
  f = np.asarray(state.fitness)[mask]
  assert np.all(f[:, 0] >= 0.4 - 1e-6)
  assert np.all(np.asarray(state.violation) == 0)
  # The constraint is active: the front runs up against f1 = 0.4 (unconstrained, ZDT1's front
  # starts at f1 = 0 and the extreme point always survives with infinite crowding).
  assert f[:, 0].min() < 0.45


def test_bad_inputs_name_the_field():
  st = NSGA2(8, GenomeSpec.real(np.zeros(3), np.ones(3)), 2)
  pop = jnp.zeros((8, 3))
  with pytest.raises(ValueError, match="fitness must have shape"):
    st.init(jax.random.key(0), pop, jnp.zeros((8, 3)), st.default_params)
  with pytest.raises(ValueError, match="population must have shape"):
    st.init(jax.random.key(0), jnp.zeros((7, 3)), jnp.zeros((7, 2)), st.default_params)
  with pytest.raises(TypeError, match="GenomeSpec"):
    NSGA2(8, get_space("evonas", "tiny"), 2)
  with pytest.raises(ValueError, match="unknown problem"):
    get_problem("zdt9")
