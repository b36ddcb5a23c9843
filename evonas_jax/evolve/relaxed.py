"""Single-objective constrained search with any evosax strategy over a relaxed genome encoding.

evosax strategies search continuous vectors; NAS genomes are integers with non-empty bit groups.
The relaxed encoding is a vector z in [0, 1]^G decoded to a valid genome:

  choice gene with n values : floor(z * n), clipped to n - 1 (equal-width bins)
  depth bit                 : z > 0.5; an all-zero stage turns on its bit with the largest z

so every z decodes to a valid genome and the decode is deterministic (no repair noise).
Constraints (e.g. latency <= budget) enter as a penalty that keeps every feasible candidate ahead
of every infeasible one (Deb 2000's rule written as a fitness): infeasible fitness = worst feasible
fitness of the generation + 1 + penalty * violation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from evonas_jax.evolve.operators import GenomeSpec


def decode_relaxed(spec: GenomeSpec, z: jax.Array) -> jax.Array:
  """(..., G) floats (clipped to [0, 1]) -> (..., G) int32 valid genomes of an integer spec."""
  if spec.kind != "int":
    raise ValueError(f"decode_relaxed needs an integer GenomeSpec, got kind={spec.kind!r}")
  z = jnp.clip(jnp.asarray(z, jnp.float32), 0.0, 1.0)
  n = jnp.asarray(spec.upper - spec.lower + 1, jnp.float32)
  x = jnp.minimum(jnp.floor(z * n), n - 1).astype(jnp.int32) + jnp.asarray(spec.lower, jnp.int32)
  if spec.bit_idx:
    bi = np.asarray(spec.bit_idx)
    x = x.at[..., bi].set((z[..., bi] > 0.5).astype(jnp.int32))
  for g in spec.bit_groups:
    gi = np.asarray(g)
    empty = ~jnp.any(x[..., gi] > 0, axis=-1, keepdims=True)
    best = jax.nn.one_hot(jnp.argmax(z[..., gi], axis=-1), len(g), dtype=jnp.int32)
    x = x.at[..., gi].set(jnp.where(empty, best, x[..., gi]))
  return x


def penalised_fitness(fitness, value=None, budget=None, penalty: float = 1.0) -> np.ndarray:
  """(n,) minimised fitness with constraint value <= budget folded in (feasible always first)."""
  f = np.asarray(fitness, np.float64)
  if value is None or budget is None:
    return f
  viol = np.maximum(np.asarray(value, np.float64) - budget, 0.0)
  feas = viol <= 0
  worst = f[feas].max() if feas.any() else f.max()
  return np.where(feas, f, worst + 1.0 + penalty * viol)


@dataclasses.dataclass
class RelaxedResult:
  """Outcome of `run_relaxed`.

  best_genome: (G,) int32, best feasible genome seen (best penalised one if none was feasible).
  best_fitness: its raw fitness. feasible: whether it satisfies the constraint.
  history: one dict per generation: generation, best_fitness (best feasible so far, inf if none),
    mean_penalised, num_feasible.
  """
  best_genome: np.ndarray
  best_fitness: float
  feasible: bool
  history: list


def _make_strategy(strategy_name: str, pop: int, num_genes: int, std: float):
  from evosax.algorithms import distribution_based_algorithms, population_based_algorithms
  template = jnp.zeros((num_genes,), jnp.float32)
  if strategy_name in distribution_based_algorithms:
    return distribution_based_algorithms[strategy_name](pop, template), "distribution"
  if strategy_name in population_based_algorithms:
    cls = population_based_algorithms[strategy_name]
    if strategy_name == "SimpleGA":
      import optax
      return cls(pop, template, std_schedule=optax.constant_schedule(std)), "population"
    return cls(pop, template), "population"
  allowed = sorted(distribution_based_algorithms) + sorted(population_based_algorithms)
  raise ValueError(f"unknown evosax strategy {strategy_name!r}; allowed: {allowed}")


def run_relaxed(strategy_name: str, space, fitness_fn: Callable, constraint_fn: Callable | None = None,
                budget: float | None = None, pop: int = 32, generations: int = 50, key=0,
                penalty: float = 1.0, std: float = 0.2, progress: bool = False) -> RelaxedResult:
  """Minimises `fitness_fn` over a search space with an evosax strategy on the relaxed encoding.

  Args:
    strategy_name: an evosax algorithm name, e.g. "CMA_ES", "SimpleGA", "Sep_CMA_ES", "PSO".
    space: an evonas_jax SearchSpace (or a GenomeSpec of kind "int").
    fitness_fn: (n, G) int32 genomes (numpy) -> (n,) fitness to MINIMISE (any Python code).
    constraint_fn: optional (n, G) -> (n,) constrained quantity (e.g. latency).
    budget: the constraint is constraint_fn(genome) <= budget.
    pop, generations: population size and number of generations.
    key: int seed or jax PRNG key.
    penalty: weight of the violation among infeasible candidates.
    std: initial step size in the unit cube (CMA-ES std_init, SimpleGA mutation std).
    progress: show a tqdm bar.
  Returns:
    RelaxedResult.
  """
  spec = space if isinstance(space, GenomeSpec) else GenomeSpec.from_space(space)
  if (constraint_fn is None) != (budget is None):
    raise ValueError("constraint_fn and budget must be given together")
  key = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
  es, kind = _make_strategy(strategy_name, pop, spec.length, std)
  params = es.default_params
  if hasattr(params, "std_init"):
    params = params.replace(std_init=std)
  decode = jax.jit(lambda z: decode_relaxed(spec, z))

  def evaluate(z):
    g = np.asarray(decode(z))
    f = np.asarray(fitness_fn(g), np.float64).reshape(-1)
    c = None if constraint_fn is None else np.asarray(constraint_fn(g), np.float64).reshape(-1)
    if f.shape != (len(g),):
      raise ValueError(f"fitness_fn must return ({len(g)},) values, got {f.shape}")
    return g, f, c

  best = {"genome": None, "fitness": np.inf, "feasible": False, "pen": np.inf}

  def record(g, f, c):
    pen = penalised_fitness(f, c, budget, penalty)
    feas = np.ones(len(f), bool) if c is None else c <= budget
    if feas.any():
      i = int(np.argmin(np.where(feas, f, np.inf)))
      if not best["feasible"] or f[i] < best["fitness"]:
        best.update(genome=g[i], fitness=float(f[i]), feasible=True, pen=float(pen[i]))
    elif not best["feasible"]:
      i = int(np.argmin(pen))
      if pen[i] < best["pen"]:
        best.update(genome=g[i], fitness=float(f[i]), pen=float(pen[i]))
    return pen, feas

  key, k_init = jax.random.split(key)
  if kind == "distribution":
    state = es.init(k_init, jnp.full((spec.length,), 0.5, jnp.float32), params)
  else:
    z0 = jax.random.uniform(k_init, (pop, spec.length))
    g, f, c = evaluate(z0)
    pen, _ = record(g, f, c)
    state = es.init(k_init, z0, jnp.asarray(pen, jnp.float32), params)
  history = []
  for gen in tqdm(range(generations), desc=f"{strategy_name} relaxed search", disable=not progress):
    key, k_ask, k_tell = jax.random.split(key, 3)
    z, state = es.ask(k_ask, state, params)
    g, f, c = evaluate(z)
    pen, feas = record(g, f, c)
    state, _ = es.tell(k_tell, z, jnp.asarray(pen, jnp.float32), state, params)
    history.append({"generation": gen + 1, "best_fitness": best["fitness"] if best["feasible"] else np.inf,
                    "mean_penalised": float(pen.mean()), "num_feasible": int(feas.sum())})
  return RelaxedResult(np.asarray(best["genome"], np.int32), best["fitness"], best["feasible"], history)
