"""Quickstart: ViT teacher + CA-DDKD supernet (tiny EvoNAS space) on Fashion-MNIST.

Command:  python -m evonas_jax.train --config configs/quickstart.py --workdir workdirs/quickstart
          (or `make quickstart`, which also runs the search on the result)
Hardware: 2 CPU cores, no GPU.
Expected: measured on a quiet 2-core machine, compiled engine, empty compile cache: 371 s in all
          (teacher ~1 min, val acc 0.73; supernet 300 steps + evaluation ~5 min, 139 s of it
          XLA compiles that a second run loads from the persistent cache); largest / smallest
          subnet test accuracy 0.736 / 0.222 (deterministic on one device). `make quickstart`
          adds the search: ~10 min in all from a fresh clone.
"""
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.num_steps = 300
  c.eval_every = 150
  c.checkpoint_every = 100
  # Short PST: the maxnet stage, then d_state, mlp, expand and depth opening. One subnet per
  # step (k_max=1): on 2 CPU cores every extra subnet per step doubles the step time
  # (configs/fashion_mnist.py uses the official k = 1, 2, 4).
  c.pst.stages = ("maxnet", "d_state-2", "mlp-2", "expand-2", "depth")
  c.pst.k_max = 1
  # 28x28 input: stage grids 7/4/2/1. The last stage is 1x1, where the frequency loss is
  # degenerate, so the quickstart distils stage 3 (2x2, 64 channels).
  c.distill.student_stage = 2
  # Teacher: patch 7 (a 4x4 token grid) is 3x cheaper per step than patch 4 and learns faster
  # per step at this size, so 450 steps cost what 150 patch-4 steps did: val acc 0.74 vs 0.51
  # (measured on 2 CPU cores; patch 4 with the conv stem reached 0.64 in 150 steps).
  c.teacher.model.patch_size = 7
  c.teacher.num_steps = 450
  c.teacher.eval_every = 450
  c.teacher.optimizer.lr = 2e-3
  c.teacher.optimizer.warmup_steps = 20
  return c
