"""Training-free search: NSGA-II (evonas_jax.evolve) with a zero-cost proxy as fitness.

Objectives (minimised): [-proxy score, size], size = #params of the arch from the space's
mask-based cost when it has one (AutoFormer, NB201), else the number of active blocks (the hybrid
EvoNAS space, whose cost model needs a static Arch). The proxy is scored in masked mode, vmapped
over the population, so the whole run is one `lax.scan` (evolve.nsga2.minimize).
Writes <workdir>/pareto.json and pareto.csv (genome, proxy score, size) of the final front.
"""
from __future__ import annotations

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.evolve.nsga2 import NSGA2, minimize
from evonas_jax.evolve.operators import GenomeSpec
from evonas_jax.proxies.registry import get_proxy


def genome_spec(space) -> GenomeSpec:
  if hasattr(space, "depth_slice"):   # EvoNAS SearchSpace: choice genes + depth bits
    return GenomeSpec.from_space(space)
  return GenomeSpec.integer(np.asarray(space.upper_bounds))


def make_objective(space, model, params, batch, proxy: str, masks_fn, size_fn, rng):
  fn = get_proxy(proxy)

  def one(g):
    m = masks_fn(g)
    return jnp.stack([-fn(model, params, m, batch, rng), size_fn(m, g)])

  return jax.vmap(one)


def training_free_search(space, model, params, batch, *, proxy="lswag", population=16,
                         generations=5, seed=0, masks_fn=None, workdir=None):
  """-> dict(front genomes (K, G), scores (K,), sizes (K,)); minimises (-proxy, size)."""
  masks_fn = masks_fn or space.genome_to_masks
  if model.cost is not None:
    size_fn = lambda m, g: jnp.asarray(model.cost(m)["params"], jnp.float32)  # noqa: E731
  else:  # number of active blocks = set depth bits of the genome
    bits = np.array([i for grp in genome_spec(space).bit_groups for i in grp], np.int32)
    if bits.size == 0:
      raise ValueError("training_free_search: the space has neither a cost model nor depth bits")
    size_fn = lambda m, g: jnp.sum(g[bits]).astype(jnp.float32)  # noqa: E731
  obj = make_objective(space, model, params, batch, proxy, masks_fn, size_fn,
                       jax.random.key(seed + 1))
  strategy = NSGA2(population, genome_spec(space), 2)
  state, _ = jax.jit(lambda k: minimize(strategy, obj, k, generations))(jax.random.key(seed))
  front = np.asarray(NSGA2.pareto_mask(state))
  genomes = np.asarray(state.population)[front]
  fit = np.asarray(state.fitness)[front]
  out = {"genomes": genomes, "scores": -fit[:, 0], "sizes": fit[:, 1], "proxy": proxy}
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "pareto.json"), "w") as f:
      json.dump({"proxy": proxy, "objectives": ["-" + proxy, "size"],
                 "front": [{"genome": g.tolist(), "score": float(s), "size": float(z)}
                           for g, s, z in zip(genomes, out["scores"], out["sizes"])]}, f, indent=1)
    with open(os.path.join(workdir, "pareto.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["genome", proxy, "size"])
      for g, s, z in zip(genomes, out["scores"], out["sizes"]):
        w.writerow([" ".join(map(str, g.tolist())), repr(float(s)), repr(float(z))])
  return out
