"""Quickstart: ViT teacher + CA-DDKD supernet (tiny EvoNAS space) on Fashion-MNIST.

Command:  python -m evonas_jax.train --config configs/quickstart.py --workdir workdirs/quickstart
          (or `make quickstart`, which also runs the search on the result)
Hardware: 2 CPU cores, no GPU.
Expected: under 10 minutes in all (teacher ~2 min, supernet ~6 min); see README for the measured
          accuracies of the teacher and of the largest/smallest subnets.
"""
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.num_steps = 400
  c.eval_every = 200
  c.checkpoint_every = 100
  # Short PST: the maxnet stage, then d_state, mlp and depth opening (k up to 2).
  c.pst.stages = ("maxnet", "d_state-2", "mlp-2", "expand-2", "depth")
  c.pst.k_max = 2
  # 28x28 input: stage grids 7/4/2/1. The last stage is 1x1, where the frequency loss is
  # degenerate, so the quickstart distils stage 3 (2x2, 64 channels).
  c.distill.student_stage = 2
  c.teacher.num_steps = 200
  c.teacher.eval_every = 200
  return c
