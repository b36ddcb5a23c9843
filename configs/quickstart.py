"""Quickstart: ViT teacher + CA-DDKD supernet (tiny EvoNAS space) on Fashion-MNIST.

Command:  python -m evonas_jax.train --config configs/quickstart.py --workdir workdirs/quickstart
          (or `make quickstart`, which also runs the search on the result)
Hardware: 2 CPU cores, no GPU.
Expected: measured by benchmarks/quickstart.py (benchmarks/results/quickstart.json) on a quiet
          2-core machine, empty compile cache: teacher val acc 0.835 in 102 s; supernet 600 steps
          + evaluation 533 s (156 s of it XLA compiles, which a second run loads from the
          persistent cache); largest / smallest subnet val acc 0.862 / 0.815, test 0.858 / 0.821
          (deterministic on one device: a rerun gave the same numbers). `make quickstart` adds
          the search: ~15 min in all from a fresh clone.

Why these settings (each measured on 2 CPU cores in the session that chose them):
  * No augmentation: the run sees ~1.4 epochs, too few for random crops and flips to pay for
    themselves. The teacher reached val 0.832 without them vs 0.767 with them (600 steps), the
    supernet's largest subnet 0.808 vs 0.728 (300 steps).
  * Sandwich sampling with k = 3 (largest + smallest + one random subnet per step once widths
    open): with the official uniform k = 1 the smallest subnet is drawn almost never and ended
    at val 0.23; sandwich k = 2 lifted it to 0.79 but left random subnets at 0.13-0.32 (nothing
    trained them); k = 3 keeps the smallest (0.78) and lifts random subnets to 0.56-0.69
    (300 steps). 600 steps: largest / smallest 0.862 / 0.815.
  * PST in three stages (maxnet -> all widths -> depth) so depth, which the smallest subnet and
    most of the search space need, is open for 30 % of the run (the five-stage schedule opened it
    for the last 20 %).
"""
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.num_steps = 600
  c.eval_every = 300
  c.checkpoint_every = 100
  c.data.crop_padding = 0
  c.data.random_flip = False
  # Progressive shrinking: the maxnet stage, every width choice, then depth.
  c.pst.stages = ("maxnet", "expand-2", "depth")
  c.pst.k_max = 3
  c.sampling.rule = "sandwich"
  # 28x28 input: stage grids 7/4/2/1. The last stage is 1x1, where the frequency loss is
  # degenerate, so the quickstart distils stage 3 (2x2, 64 channels).
  c.distill.student_stage = 2
  # Teacher: patch 7 (a 4x4 token grid) is 3x cheaper per step than patch 4 and learns faster
  # per step at this size (1200 steps without augmentation: patch 7 val 0.855, patch 4 with
  # dim 64 0.820 at 1.2x the time).
  c.teacher.model.patch_size = 7
  c.teacher.num_steps = 900
  c.teacher.eval_every = 900
  c.teacher.optimizer.lr = 2e-3
  c.teacher.optimizer.warmup_steps = 20
  return c
