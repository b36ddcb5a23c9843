"""Fashion-MNIST, longer: ViT teacher + CA-DDKD supernet with the full official PST (k up to 4).

Command:  python -m evonas_jax.train --config configs/fashion_mnist.py --workdir workdirs/fmnist
Hardware: 1 GPU (minutes) or a CPU host (2 cores: several hours; 8+ cores: ~1-2 h).
Expected: teacher ~0.90 validation accuracy; largest subnet ~0.90 and smallest ~0.85 after the
          8 PST stages (not yet measured end to end on a GPU; the quickstart numbers in
          README.md are the measured reference). Then search with configs/search_fashion_mnist.py.
"""
from evonas_jax.train_config import default_config


def get_config():
  c = default_config()
  c.num_steps = 8000                  # ~18.6 epochs of 55k at batch 128, over the 8 PST stages
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.log_every = 100
  c.pst.stages = ()                   # the official 8 stages, scaled to num_steps
  c.pst.k_max = 4                     # official k: 1, 2, then 4
  c.sampling.rule = "uniform"         # "sandwich" for largest + smallest + random
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 300
  c.optimizer.restart_per_stage = True   # official: the schedule restarts at every PST stage
  c.drop_path_rate = 0.05
  c.teacher.num_steps = 3000
  c.teacher.eval_every = 1000
  c.teacher.model.update(dict(patch_size=4, dim=192, depth=6, heads=3, mlp_ratio=4.0))
  c.distill.projector.update(dict(num_heads=4, ffn_ratio=4))
  c.distill.student_stage = 2         # 2x2 at 28x28 (the last stage is 1x1: see quickstart)
  return c
