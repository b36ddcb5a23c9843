"""CI-size smoke config: the whole train job in about a minute on 2 CPU cores.

Command:  python -m evonas_jax.train --config configs/ci_tiny.py --workdir /tmp/ci_tiny
Hardware: any CPU. Data: scikit-learn's bundled digits at 16x16 (always available offline).
Expected: finishes in ~1-2 minutes; accuracies are not meaningful (a few steps only). Used by
          the multi-process test and as a template for quick experiments.
"""
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.data.source = "digits"
  c.data.val_size = 200
  c.data.image_size = 16
  c.data.mean, c.data.std = 0.3, 0.35
  c.batch_size = 32
  c.eval_batch_size = 200
  c.num_steps = 6
  c.log_every = 2
  c.eval_every = 100
  c.checkpoint_every = 3
  c.bn_calibration_batches = 1
  c.optimizer.warmup_steps = 2
  c.teacher.source = "none"
  c.teacher.num_steps = 10
  c.teacher.eval_every = 10
  c.teacher.model.update(dict(patch_size=4, dim=32, depth=1, heads=2, mlp_ratio=2.0))
  c.distill.projector.update(dict(num_heads=2, ffn_ratio=2))
  c.distill.student_stage = 1       # 2x2 at 16x16 (the last stage is 1x1)
  c.pst.stages = ("maxnet", "depth")
  c.pst.k_max = 1
  c.parallel.data_sharding = "global_slice"
  return c
