"""NAS-Bench-201 zero-cost proxy benchmark, CPU size (reduced network).

Command:  python -m evonas_jax.proxies.bench --config configs/proxies_nb201.py --workdir W
Hardware: CPU. The masked NB201 network computes every op of every edge, so the standard
          C=16, N=5 network costs ~30 s per arch per gradient proxy on a shared 2-core machine;
          this config scores a reduced skeleton (C=8, one cell per stage) on the 20 real
          CIFAR-10 images. The standard size is configs/proxies_nb201_full.py (GPU).
Expected: writes W/nb201_scores.csv and W/nb201_correlations.json; see
          benchmarks/results/nb201_correlations.json for the measured numbers (this config with
          its defaults produced them: 240 archs, C=8, N=1; rerunning the command resumes from
          W/scores/). Then `python benchmarks/libra.py` for benchmarks/results/libra.json.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.num_archs = 240
  c.arch_seed = 0
  c.arch_indices = ()               # explicit NB201 indices instead of a sample
  c.init_seed = 0
  c.num_seeds = 1                   # init seeds averaged (paper: 5)
  c.arch_batch = 16                 # archs per vmapped call
  c.proxies = ("lswag", "nwot", "swap", "synflow", "params", "macs", "jacov", "fisher", "zico",
               "snip", "grad_norm", "grasp")
  # Fisher's per-layer sum: "param" = Suite-Zero/NASLib (each channel's value counted once per
  # weight of that channel, i.e. times the layer's fan-in); "channel" = plain sum over channels.
  c.fisher = ml_collections.ConfigDict({"weighting": "param"})
  c.benchdata_dir = ""              # "" -> $EVONAS_BENCHDATA, else the shipped subset
  # Training-free NSGA-II search after the scoring (evonas_jax.proxies.tf_search), objectives
  # (-proxy, cost): off by default (the benchmark's job is the correlations).
  c.search = ml_collections.ConfigDict({"enabled": False, "proxy": "nwot", "population": 16,
                                        "generations": 5, "seed": 0})
  # The search's cost objective: "" = the cell's #params; else the HW-NAS-Bench latency (ms) of
  # that device, one of edgegpu, raspi4, edgetpu, pixel3, eyeriss, fpga (shipped tables for
  # latency_dataset "cifar10" / "ImageNet16-120").
  c.latency_device = ""
  c.latency_dataset = "cifar10"
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
