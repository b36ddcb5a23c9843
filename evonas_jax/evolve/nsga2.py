"""NSGA-II (Deb et al. 2002) as an evosax-style strategy: functional init / ask / tell.

Fitness is (pop, M) and MINIMISED (evosax convention). Everything is jit-compiled with the
strategy static (as evosax does) and vmap-able over seeds:

  strategy = NSGA2(population_size=96, genome=GenomeSpec.from_space(space), num_objectives=3)
  params = strategy.default_params
  pop = strategy.initial_population(key)
  state = strategy.init(key, pop, fitness, params)
  for _ in range(generations):
    genomes, state = strategy.ask(key_a, state, params)   # binary tournament, crossover, mutation
    state, metrics = strategy.tell(key_t, genomes, objectives(genomes), state, params)

Defaults follow the official EvoNAS search for integer genomes (pymoo 0.6 NSGA-II: crossover
0.95, mutation 0.1 per offspring, eta 1.0; research/evonas.md §4) and pymoo's NSGA-II defaults for
real genomes (SBX 0.9 / eta 15, polynomial mutation on every offspring / eta 20, 1/G per gene).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from evonas_jax.evolve import operators as ops
from evonas_jax.evolve.operators import GenomeSpec
from evonas_jax.evolve.sorting import (crowding_distance, duplicate_mask, non_dominated_rank,
                                       rank_and_crowding_order)


@struct.dataclass
class Params:
  """NSGA-II hyper-parameters (a pytree: may be traced, vmapped, or `.replace`d)."""
  crossover_prob: float          # chance a mating recombines at all
  eta_crossover: float           # SBX distribution index (real genomes)
  crossover_prob_var: float      # SBX: chance each variable is recombined
  crossover_prob_exchange: float # SBX: chance the two children swap a variable
  bit_swap_prob: float           # uniform crossover on depth bits
  mutation_prob: float           # chance an offspring is mutated at all (pymoo 0.6 semantics)
  mutation_prob_var: float       # per-gene chance for polynomial mutation
  eta_mutation: float            # polynomial mutation distribution index
  bit_flip_prob: float           # per-bit flip chance


@struct.dataclass
class State:
  """Population and its survival bookkeeping. n = population_size, G genes, M objectives."""
  population: jax.Array   # (n, G) int32 (space genomes) or float32 (real genomes)
  fitness: jax.Array      # (n, M) float32, minimised
  violation: jax.Array    # (n,) float32 >= 0; 0 = feasible
  rank: jax.Array         # (n,) int32 front index (0 = non-dominated)
  crowding: jax.Array     # (n,) float32 crowding distance in its front
  generation: jax.Array   # () int32, number of `tell`s since `init`


class NSGA2:
  """Non-dominated sorting genetic algorithm II with (mu + lambda) rank-and-crowding survival.

  Args:
    population_size: n (offspring per generation = n).
    genome: a GenomeSpec (`GenomeSpec.from_space(space)` or `GenomeSpec.real(lo, hi)`).
    num_objectives: M.
    eliminate_duplicates: re-mutate offspring equal to a population member or to an earlier
      offspring (up to `duplicate_retries` rounds, vectorised), and let duplicates survive only
      after every distinct genome (pymoo's default duplicate elimination, with static shapes).
    duplicate_retries: rounds of forced re-mutation of duplicates per `ask`.
  """

  def __init__(self, population_size: int, genome: GenomeSpec, num_objectives: int,
               eliminate_duplicates: bool = True, duplicate_retries: int = 5):
    if not isinstance(genome, GenomeSpec):
      raise TypeError(f"genome must be a GenomeSpec (GenomeSpec.from_space / .real), got "
                      f"{type(genome).__name__}")
    if population_size < 2:
      raise ValueError(f"population_size must be >= 2, got {population_size}")
    if num_objectives < 1:
      raise ValueError(f"num_objectives must be >= 1, got {num_objectives}")
    self.population_size = int(population_size)
    self.genome = genome
    self.num_objectives = int(num_objectives)
    self.eliminate_duplicates = bool(eliminate_duplicates)
    self.duplicate_retries = int(duplicate_retries)

  # ------------------------------------------------------------------ params
  @property
  def default_params(self) -> Params:
    spec = self.genome
    if spec.kind == "int":
      return Params(crossover_prob=0.95, eta_crossover=15.0, crossover_prob_var=0.5,
                    crossover_prob_exchange=0.5, bit_swap_prob=0.5, mutation_prob=0.1,
                    mutation_prob_var=min(0.5, 1.0 / max(len(spec.choice_idx), 1)),
                    eta_mutation=1.0, bit_flip_prob=1.0 / max(spec.num_bits, 1))
    return Params(crossover_prob=0.9, eta_crossover=15.0, crossover_prob_var=0.5,
                  crossover_prob_exchange=0.5, bit_swap_prob=0.5, mutation_prob=1.0,
                  mutation_prob_var=1.0 / spec.length, eta_mutation=20.0, bit_flip_prob=0.0)

  # ------------------------------------------------------------------ population
  @partial(jax.jit, static_argnames=("self",))
  def initial_population(self, key: jax.Array) -> jax.Array:
    """(n, G) uniform valid genomes; duplicates are redrawn (a few rounds)."""
    k0, k1 = jax.random.split(key)
    x = self.genome.sample(k0, self.population_size)
    if not self.eliminate_duplicates:
      return x

    def redraw(i, x):
      fresh = self.genome.sample(jax.random.fold_in(k1, i), self.population_size)
      return jnp.where(duplicate_mask(x)[:, None], fresh, x)

    return jax.lax.fori_loop(0, self.duplicate_retries, redraw, x)

  @partial(jax.jit, static_argnames=("self",))
  def init(self, key: jax.Array, population: jax.Array, fitness: jax.Array, params: Params,
           violation: jax.Array | None = None) -> State:
    """State from an evaluated population (n, G) with fitness (n, M) (minimised)."""
    del key, params
    pop, f, v = self._check(population, fitness, violation)
    rank = non_dominated_rank(f, v)
    return State(pop, f, v, rank, crowding_distance(f, rank), jnp.int32(0))

  # ------------------------------------------------------------------ ask
  @partial(jax.jit, static_argnames=("self",))
  def ask(self, key: jax.Array, state: State, params: Params) -> tuple[jax.Array, State]:
    """(n, G) valid offspring from binary tournaments on (rank, crowding); state unchanged."""
    spec, n = self.genome, self.population_size
    k_sel, k_x, k_m, k_r, k_d = jax.random.split(key, 5)
    num_matings = (n + 1) // 2
    parents = self._tournament(k_sel, state, 2 * num_matings).reshape(num_matings, 2)
    p1, p2 = state.population[parents[:, 0]], state.population[parents[:, 1]]
    c1, c2 = jax.vmap(lambda k, a, b: ops.crossover(k, spec, a, b, params))(
        jax.random.split(k_x, num_matings), p1, p2)
    kids = jnp.concatenate([c1, c2], axis=0)[:n]
    kids = self._mutate_repair(k_m, k_r, kids, params, force=False)
    if self.eliminate_duplicates:
      # Re-mutate (forced) the offspring that duplicate a member or an earlier offspring, at
      # most `duplicate_retries` rounds. The loop tests first, so a clean brood (the usual case
      # for real genomes) costs one check and no mutation; one copy of the check and of
      # mutate/repair in the graph keeps compile time down.
      def cond(c):
        i, _, dup = c
        return jnp.any(dup) & (i < self.duplicate_retries)

      def retry(c):
        i, x, dup = c
        km, kr = jax.random.split(jax.random.fold_in(k_d, i))
        x = jnp.where(dup[:, None], self._mutate_repair(km, kr, x, params, force=True), x)
        return i + 1, x, ops.duplicates(x, state.population)

      dup0 = ops.duplicates(kids, state.population)
      _, kids, _ = jax.lax.while_loop(cond, retry, (jnp.int32(0), kids, dup0))
    return kids.astype(spec.dtype), state

  def _mutate_repair(self, k_m, k_r, x, params, force):
    spec = self.genome
    m = x.shape[0]
    x = jax.vmap(lambda k, g: ops.mutate(k, spec, g, params, force))(jax.random.split(k_m, m), x)
    return jax.vmap(lambda k, g: ops.repair(k, spec, g))(jax.random.split(k_r, m), x)

  def _tournament(self, key: jax.Array, state: State, num: int) -> jax.Array:
    """`num` winners of binary tournaments; competitors come from concatenated permutations
    so every individual enters about equally often. Lower rank wins, then larger crowding,
    then a coin flip."""
    n = self.population_size
    k_p, k_c = jax.random.split(key)
    num_perms = math.ceil(2 * num / n)
    comp = jnp.concatenate([jax.random.permutation(k, n) for k in jax.random.split(k_p, num_perms)])
    a, b = comp[:num], comp[num:2 * num]
    ra, rb = state.rank[a], state.rank[b]
    ca, cb = state.crowding[a], state.crowding[b]
    coin = jax.random.bernoulli(k_c, 0.5, (num,))
    a_wins = (ra < rb) | ((ra == rb) & ((ca > cb) | ((ca == cb) & coin)))
    return jnp.where(a_wins, a, b)

  # ------------------------------------------------------------------ tell
  @partial(jax.jit, static_argnames=("self",))
  def tell(self, key: jax.Array, genomes: jax.Array, fitness: jax.Array, state: State,
           params: Params, violation: jax.Array | None = None) -> tuple[State, dict]:
    """(mu + lambda) survival: keep the n best of parents + offspring by (rank, crowding).

    Args:
      genomes: (n, G) offspring from `ask`. fitness: (n, M) minimised.
      violation: optional (n,) constraint violation >= 0 -> Deb's constraint domination.
    Returns:
      (new state, metrics dict).
    """
    del params
    x, f, v = self._check(genomes, fitness, violation)
    allx = jnp.concatenate([state.population, x], axis=0)
    allf = jnp.concatenate([state.fitness, f], axis=0)
    allv = jnp.concatenate([state.violation, v], axis=0)
    dup = duplicate_mask(allx) if self.eliminate_duplicates else None
    order, rank, crowd = rank_and_crowding_order(key, allf, allv, dup)
    keep = order[:self.population_size]
    new = State(allx[keep], allf[keep], allv[keep], rank[keep], crowd[keep],
                state.generation + 1)
    feas = new.violation <= 0
    front = self.pareto_mask(new)
    metrics = {
        "generation": new.generation,
        "num_pareto": jnp.sum(front),
        "num_feasible": jnp.sum(feas),
        "num_duplicates": jnp.sum(dup[keep]) if dup is not None else jnp.int32(0),
        "ideal": jnp.min(jnp.where(feas[:, None], new.fitness, jnp.inf), axis=0),
        "offspring_survived": jnp.sum(keep >= self.population_size),
    }
    return new, metrics

  @staticmethod
  def pareto_mask(state: State) -> jax.Array:
    """(n,) bool: rank-0 and feasible members of the population."""
    return (state.rank == 0) & (state.violation <= 0)

  # ------------------------------------------------------------------ checks
  def _check(self, population, fitness, violation):
    n, g, m = self.population_size, self.genome.length, self.num_objectives
    pop = jnp.asarray(population)
    f = jnp.asarray(fitness, jnp.float32)
    if pop.shape != (n, g):
      raise ValueError(f"population must have shape (population_size={n}, genome length={g}), "
                       f"got {pop.shape}")
    if f.shape != (n, m):
      raise ValueError(f"fitness must have shape (population_size={n}, num_objectives={m}), "
                       f"got {f.shape}")
    if violation is None:
      v = jnp.zeros((n,), jnp.float32)
    else:
      v = jnp.maximum(jnp.asarray(violation, jnp.float32), 0.0)
      if v.shape != (n,):
        raise ValueError(f"violation must have shape (population_size={n},), got {v.shape}")
    return pop.astype(self.genome.dtype), f, v


def minimize(strategy: NSGA2, objective_fn: Callable, key: jax.Array, num_generations: int,
             params: Params | None = None, constraint_fn: Callable | None = None,
             track: Callable | None = None):
  """A whole NSGA-II run for a jit-able objective, as one `lax.scan` (jit / vmap it yourself).

  Args:
    objective_fn: (n, G) genomes -> (n, M) minimised objectives (pure jnp).
    constraint_fn: optional (n, G) -> (n,) violation >= 0.
    track: optional State -> pytree recorded every generation (e.g. a hypervolume).
  Returns:
    (final State, per-generation `track` outputs or None).
  """
  params = strategy.default_params if params is None else params
  k_init, k_pop, k_run = jax.random.split(key, 3)
  cfn = constraint_fn or (lambda x: None)
  pop = strategy.initial_population(k_pop)
  state = strategy.init(k_init, pop, objective_fn(pop), params, cfn(pop))

  def step(state, k):
    k_a, k_t = jax.random.split(k)
    x, state = strategy.ask(k_a, state, params)
    state, _ = strategy.tell(k_t, x, objective_fn(x), state, params, cfn(x))
    return state, (track(state) if track is not None else None)

  return jax.lax.scan(step, state, jax.random.split(k_run, num_generations))
