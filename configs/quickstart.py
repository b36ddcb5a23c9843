"""Quickstart: the tiny EvoNAS supernet on Fashion-MNIST, random subnets per step.

Command:  python -m evonas_jax.train --config configs/quickstart.py --workdir workdirs/quickstart
Hardware: 2 CPU cores, no GPU.
Expected: about 10 minutes wall time in all; largest-subnet test accuracy ~0.85 and smallest
          ~0.80 on Fashion-MNIST (see README for the measured numbers).
"""
import ml_collections

from evonas_jax import data


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.space = "evonas"          # "evonas" (official 28 genes) | "hybrid" (+ block-type genes)
  c.preset = "tiny"           # widths: "tiny" 16/32/64/128, "small", "base" (official)
  c.data = data.get_config_defaults()   # Fashion-MNIST through TFDS, 28x28x1
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 600
  c.subnets_per_step = 1      # official PST uses 1, then 2, then 4 (CA-DDKD trainer)
  c.drop_path_rate = 0.0
  c.log_every = 50
  c.eval_every = 300
  c.bn_calibration_batches = 20   # per-subnet BatchNorm recalibration before each evaluation
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 100
  c.optimizer.final_lr_fraction = 0.01
  c.optimizer.grad_clip = 1.0
  return c
