"""Evolutionary search: NSGA-II as an evosax-style strategy, genome operators, sorting,
hypervolume, test problems, and single-objective constrained search with evosax strategies."""
from evonas_jax.evolve.hypervolume import hypervolume, hypervolume_2d, hypervolume_3d
from evonas_jax.evolve.nsga2 import NSGA2, Params, State, minimize
from evonas_jax.evolve.operators import GenomeSpec
from evonas_jax.evolve.problems import PROBLEMS, Problem, get_problem
from evonas_jax.evolve.relaxed import RelaxedResult, decode_relaxed, run_relaxed
from evonas_jax.evolve.sorting import (crowding_distance, dominates, non_dominated_rank,
                                       rank_and_crowding_order)

__all__ = [
    "NSGA2", "Params", "State", "minimize", "GenomeSpec", "hypervolume", "hypervolume_2d",
    "hypervolume_3d", "PROBLEMS", "Problem", "get_problem", "crowding_distance", "dominates",
    "non_dominated_rank", "rank_and_crowding_order", "RelaxedResult", "decode_relaxed", "run_relaxed",
]
