"""Training-free search: NSGA-II (evonas_jax.evolve) with a zero-cost proxy as fitness.

Objectives (minimised): [-proxy score, size], size = #params of the arch from the space's
mask-based cost when it has one (AutoFormer, NB201), else the number of active blocks (the hybrid
EvoNAS space, whose cost model needs a static Arch). On the NB201 space the second objective can
instead be a device latency from HW-NAS-Bench (`latency_device`: edgegpu, raspi4, edgetpu,
pixel3, eyeriss or fpga; `latency_dataset` cifar10 or ImageNet16-120), looked up per genome
from the shipped table (`benchdata.load_hw_latency`). The proxy is scored in masked mode, vmapped
over the population, so the whole run is one `lax.scan` (evolve.nsga2.minimize).
Writes <workdir>/pareto.json and pareto.csv (genome, proxy score, size or latency) of the final
front.
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


# Cells HW-NAS-Bench has no latency for (NaN; 4,699 cells on the Edge TPU) get this many ms:
# finite, so NSGA-II's crowding distances stay defined, and far above every measured value
# (< 100 ms), so such a cell is never preferred for its latency.
MISSING_LATENCY_MS = 1e6


def nb201_latency_lookup(device: str, dataset: str = "cifar10", benchdata_dir=None):
  """(genome (6,) int -> latency ms scalar) for NB201 genomes (NASLib op tuples), a jnp gather
  from the HW-NAS-Bench table of `device` (vmap/jit-able), and the table (5^6,) float32 it
  gathers from, indexed by the base-5 code sum_i g_i 5^(5-i) of the genome (the order of
  `NB201Space.all_genomes`). ValueError for an unknown device or dataset."""
  from evonas_jax.proxies import benchdata
  from evonas_jax.space import nb201 as nbspace
  lat = benchdata.load_hw_latency(device, dataset, benchdata_dir)      # NB201 index order
  genomes = np.array([[int(v) for v in t.strip("()").split(",")]
                      for t in benchdata.load_nb201_table(benchdata_dir)["naslib_op_indices"]])
  powers = nbspace.NUM_OPS ** np.arange(nbspace.NUM_EDGES - 1, -1, -1)
  table = np.full(nbspace.SIZE, np.nan)
  table[genomes @ powers] = lat
  if np.isnan(table).sum() != np.isnan(lat).sum():
    raise ValueError("the NB201 table does not cover every NASLib op tuple once")
  table = jnp.asarray(np.where(np.isnan(table), MISSING_LATENCY_MS, table), jnp.float32)
  pw = jnp.asarray(powers, jnp.int32)
  return (lambda g: table[jnp.dot(jnp.asarray(g, jnp.int32), pw)]), table


def make_objective(space, model, params, batch, proxy: str, masks_fn, size_fn, rng):
  fn = get_proxy(proxy)

  def one(g):
    m = masks_fn(g)
    return jnp.stack([-fn(model, params, m, batch, rng), size_fn(m, g)])

  return jax.vmap(one)


def training_free_search(space, model, params, batch, *, proxy="lswag", population=16,
                         generations=5, seed=0, masks_fn=None, workdir=None, latency_device="",
                         latency_dataset="cifar10", benchdata_dir=None):
  """-> dict(front genomes (K, G), scores (K,), sizes (K,), size_name); minimises
  (-proxy, size), or (-proxy, latency ms on `latency_device`) when it is set (NB201 space only;
  "" = the size objective). sizes then holds the latencies (MISSING_LATENCY_MS where
  HW-NAS-Bench has none)."""
  masks_fn = masks_fn or getattr(space, "genome_to_masks", None) or space.masks
  size_name = "size"
  if latency_device:
    if getattr(space, "name", "") != "nb201":
      raise ValueError(f"latency_device={latency_device!r} needs the NB201 space (HW-NAS-Bench "
                       f"covers NB201 cells only); got space {getattr(space, 'name', space)!r}")
    lookup, _ = nb201_latency_lookup(latency_device, latency_dataset, benchdata_dir)
    size_fn = lambda m, g: lookup(g)  # noqa: E731
    size_name = f"{latency_device}_latency_ms"
  elif model.cost is not None:
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
  out = {"genomes": genomes, "scores": -fit[:, 0], "sizes": fit[:, 1], "proxy": proxy,
         "size_name": size_name}
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "pareto.json"), "w") as f:
      json.dump({"proxy": proxy, "objectives": ["-" + proxy, size_name],
                 "latency_device": latency_device,
                 "latency_dataset": latency_dataset if latency_device else "",
                 "front": [{"genome": g.tolist(), "score": float(s), "size": float(z)}
                           for g, s, z in zip(genomes, out["scores"], out["sizes"])]}, f, indent=1)
    with open(os.path.join(workdir, "pareto.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["genome", proxy, size_name])
      for g, s, z in zip(genomes, out["scores"], out["sizes"]):
        w.writerow([" ".join(map(str, g.tolist())), repr(float(s)), repr(float(z))])
  return out
