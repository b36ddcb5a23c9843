"""NAS-Bench-201 zero-cost proxy benchmark, CPU size (reduced network).

Command:  python -m evonas_jax.proxies.bench --config configs/proxies_nb201.py --workdir W
Hardware: CPU. The masked NB201 network computes every op of every edge, so the standard
          C=16, N=5 network costs ~30 s per arch per gradient proxy on a shared 2-core machine;
          this config scores a reduced skeleton (C=8, one cell per stage) on the 20 real
          CIFAR-10 images. The standard size is configs/proxies_nb201_full.py (GPU).
Expected: writes W/nb201_scores.csv and W/nb201_correlations.json; see
          benchmarks/results/nb201_correlations.json for the measured numbers.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.num_archs = 200
  c.arch_seed = 0
  c.arch_indices = ()               # explicit NB201 indices instead of a sample
  c.init_seed = 0
  c.num_seeds = 1                   # init seeds averaged (paper: 5)
  c.arch_batch = 8                  # archs per vmapped call
  c.proxies = ("params", "macs", "nwot", "swap", "synflow", "snip", "grad_norm", "jacov",
               "fisher", "grasp", "zico", "lswag")
  c.benchdata_dir = ""              # "" -> $EVONAS_BENCHDATA or ../shared/benchdata
  c.net = ml_collections.ConfigDict({"channels": 8, "cells": 1})
  c.data = ml_collections.ConfigDict({"source": "foolbox", "num_images": 20, "path": ""})
  c.lswag = ml_collections.ConfigDict({
      "band": "auto",               # "auto" (spike rule on calib_archs) or (lo, hi) deciles
      "variance": "minibatch",      # "per_sample" or "minibatch" (ZiCo-style splits)
      "num_splits": 2,
      "calib_archs": 32,
      "margin": 0.5,
  })
  return c
