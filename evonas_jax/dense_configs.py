"""Shared bodies of the dense-task training configs (configs/{depth,seg}_local.py,
configs/{nyu_depth,kitti_depth,ade20k_seg}.py); each config file keeps its own docstring
(command, hardware, expected result) and the fields that differ."""
from __future__ import annotations

from evonas_jax.data.dense import dense_config_defaults
from evonas_jax.train_config import default_config

# Research §3.3: per-task output-KD ratio λ and feature weights α1 (spatial), α2 (frequency),
# all with the "sum over C·H·W / N" reduction.
PAPER_WEIGHTS = {"depth": (0.1, 0.08, 0.06), "segmentation": (0.5, 3e-5, 2e-5)}


def _distill(c, task: str):
  c.distill.kd_ratio, c.distill.alpha_spatial, c.distill.alpha_frequency = PAPER_WEIGHTS[task]
  c.distill.reduction = "sum"
  c.distill.student_stage = -1          # the last stage (stride 32), as the paper
  return c


def local_dense_config(task: str, dataset: str = "arc2017_local"):
  """CPU-sized run on a local real scene: tiny preset, batch 4, 120 steps, small ViT teacher."""
  c = default_config()
  c.task = task
  c.data = dense_config_defaults(dataset)       # 96 x 128 crops of the 120 x 160 scene
  c.preset = "tiny"
  c.batch_size, c.eval_batch_size = 4, 2
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 120, 10, 60, 60
  # Exact per-subnet BN statistics need more than a handful of crops of one scene: on the
  # depth overfit test (tests/test_dense_pipeline.py) 4 crops (2 x 2) gave d1 0.28, 16 crops
  # (8 x 2) d1 0.98 and AbsRel 0.080.
  c.bn_calibration_batches, c.bn_calibration_batch_size = 8, 2
  c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 10
  c.pst.stages = ("maxnet", "d_state-2", "depth")
  c.pst.k_max = 1
  c.teacher.num_steps, c.teacher.eval_every = 60, 60
  c.teacher.model.update(dict(patch_size=16, dim=64, depth=2, heads=2))
  c.teacher.optimizer.lr, c.teacher.optimizer.warmup_steps = 1e-3, 5
  return _distill(c, task)


def gpu_dense_config(task: str, dataset: str):
  """Official-scale dense supernet (base preset, 8 PST stages, k up to 4, ViT-B-sized teacher)."""
  c = default_config()
  c.task = task
  c.data = dense_config_defaults(dataset)
  c.preset = "base"
  c.batch_size, c.eval_batch_size = 16, 8
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 100_000, 100, 5_000, 2_000
  c.bn_calibration_batches, c.bn_calibration_batch_size = 8, 8
  c.optimizer.lr, c.optimizer.warmup_steps = 1e-4, 1_000
  c.optimizer.restart_per_stage = True
  c.pst.stages = ()                   # the official 8 stages, scaled to num_steps
  c.pst.k_max = 4
  c.drop_path_rate = 0.2
  c.teacher.num_steps, c.teacher.eval_every = 50_000, 5_000
  c.teacher.model.update(dict(patch_size=16, dim=768, depth=12, heads=12))
  c.teacher.optimizer.lr, c.teacher.optimizer.warmup_steps = 1e-4, 2_000
  return _distill(c, task)
